// Package core is the composition root of the pymooncake engine: the one
// place that knows the concrete transports. FromEnv parses the environment
// (the engine's variables and each transport's, strictly, all at once) and
// New builds an engine.Engine from a Config: the logger, the GPU driver and
// its staging buffers, the metadata store, and the transports this host
// can run, in order of preference. Everything above (bindings) and below
// (core/engine) sees transports only through core/transport.
//
// docs/architecture.md draws the layers. What New opens, the engine
// releases when it closes.
package core
