// Package config reads the engine's environment variables (Mooncake's
// MC_*, and pymooncake's limits on what peers can make an engine hold:
// PYMOONCAKE_NOTIFY_*, PYMOONCAKE_HANDSHAKE_*) once, strictly, into a typed
// Env, and provides the strict Parser with which each transport reads its
// own (tcp.ConfigFromEnv, rdma.ConfigFromEnv, barex.ConfigFromEnv); the
// composition root (package core, FromEnv) calls them all at initialize. A
// bad value is an error naming the variable and the value, never a silent
// default. core never calls os.Getenv: callers pass a lookup function
// (os.LookupEnv in production, a map in tests).
package config
