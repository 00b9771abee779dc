// Package config reads Mooncake's environment variables (MC_*) once, strictly,
// into a typed Env. A bad value is an error naming the variable and the value,
// never a silent default. core never calls os.Getenv: callers pass a lookup
// function (os.LookupEnv in production, a map in tests) to FromEnv.
package config
