//go:build tools

// Package deps pins modules that are used only by generated code (gopy's
// gopyh), by build-tagged files, or by packages not yet written, so that
// `go mod tidy` keeps them in go.mod. It is never built.
package deps

import (
	_ "github.com/NVIDIA/go-nvml/pkg/nvml"
	_ "github.com/go-python/gopy/gopyh"
	_ "github.com/stretchr/testify/require"
	_ "go.etcd.io/etcd/client/v3"
	_ "go.uber.org/zap"
)
