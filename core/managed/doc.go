// Package managed is the engine's allocator of registered host memory:
// allocate_managed_buffer and free_managed_buffer. It maps memory with mmap
// (outside the Go heap), registers it through the function the engine gives
// it, and unmaps everything at Close, once the engine can no longer touch
// it. A free of anything but a live block, with its size class, is refused.
package managed
