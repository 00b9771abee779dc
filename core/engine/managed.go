package engine

// AllocateManaged returns the address of a registered buffer of at least
// length bytes (allocate_managed_buffer): Mooncake's buddy allocator over
// registered 2 GiB pools, created on first use (core/managed).
func (e *Engine) AllocateManaged(length uint64) (uintptr, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	return e.managed.Alloc(length)
}

// FreeManaged returns a buffer from AllocateManaged; length must be the
// length it was allocated with (as Mooncake's free_managed_buffer).
func (e *Engine) FreeManaged(addr uintptr, length uint64) error {
	return e.managed.Free(addr, length)
}
