package nvmlsym

import "errors"

// ErrBoundElsewhere matches a Bind of one library while the trampolines
// are bound to another: one process binds one NVML at a time.
var ErrBoundElsewhere = errors.New("nvml functions are bound to another library")
