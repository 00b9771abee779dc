// Package config reads Mooncake's environment variables (MC_*), and
// pymooncake's limits on what peers can make an engine hold
// (PYMOONCAKE_NOTIFY_*, PYMOONCAKE_HANDSHAKE_*), once, strictly, into a
// typed Env. A bad value is an error naming the variable and the value,
// never a silent default. core never calls os.Getenv: callers pass a lookup
// function (os.LookupEnv in production, a map in tests) to FromEnv.
package config
