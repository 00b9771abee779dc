package bindings

import (
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the engine's logger: console lines on stderr at
// MC_LOG_LEVEL, as Mooncake's glog writes to stderr by default. Failures
// that Python reports through return codes are logged on the Python side
// (logging.getLogger("pymooncake")); this logger carries what happens in the
// background (peers, connections, stores).
func newLogger(level zapcore.Level) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	enc.EncodeLevel = zapcore.CapitalLevelEncoder
	c := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zap.New(c).Named("pymooncake")
}
