package tcp

import (
	"fmt"
	"time"
)

// GPU lets the transport move registered GPU memory, which it never
// touches in place: bytes go through the page-locked buffers of a Stage,
// with the copies between device and buffers overlapping the socket I/O.
// The engine provides it; nil means all registered memory is host memory.
type GPU interface {
	// Device returns the ordinal of the GPU holding the registered range
	// [addr, addr+n), or a negative number for host memory. It is called
	// for every request and must not block.
	Device(addr, n uint64) int
	// Stage lends a staging pipeline of device ord. The transport releases
	// it when the request is done.
	Stage(ord int) (Stage, error)
}

// Stage is a set of page-locked buffers with a copy queue of one device
// (gpu.Stage). A copy into or out of a buffer runs asynchronously; the
// buffer may be touched again only after Wait on its slot.
type Stage interface {
	// Slots is the number of buffers.
	Slots() int
	// Buffer is slot's buffer; all have the same length.
	Buffer(slot int) []byte
	// ToHost queues a copy of n bytes from device address src into slot's
	// buffer.
	ToHost(slot int, src uintptr, n int) error
	// ToDevice queues a copy of slot's first n bytes to device address dst.
	ToDevice(slot int, dst uintptr, n int) error
	// Wait blocks until slot's queued copies have run.
	Wait(slot int) error
	// Release waits for every queued copy and gives the stage back.
	Release()
}

// stage returns a Stage for the registered range [addr, addr+n) when it is
// GPU memory, nil for host memory.
func (t *Transport) stage(addr, n uint64) (Stage, error) {
	return stageFor(t.cfg.GPU, addr, n)
}

func stageFor(g GPU, addr, n uint64) (Stage, error) {
	if g == nil {
		return nil, nil
	}
	ord := g.Device(addr, n)
	if ord < 0 {
		return nil, nil
	}
	st, err := g.Stage(ord)
	if err != nil {
		return nil, fmt.Errorf("%w: no staging buffers for device %d: %w", ErrStaging, ord, err)
	}
	return st, nil
}

// sendStaged writes prefix (may be empty), then n bytes of device memory at
// src. Up to Slots chunks are copied out ahead, so the copy of the next
// chunks overlaps the socket write of this one; each chunk must leave
// within d (as in write).
func (s *stream) sendStaged(prefix []byte, st Stage, src uintptr, n uint64, d time.Duration) error {
	k := uint64(st.Slots())
	chunk := uint64(len(st.Buffer(0)))
	chunks := (n + chunk - 1) / chunk
	copyOut := func(c uint64) error {
		off := c * chunk
		if err := st.ToHost(int(c%k), src+uintptr(off), int(min(chunk, n-off))); err != nil {
			return fmt.Errorf("%w: copy %d bytes at %#x from the device: %w", ErrStaging, min(chunk, n-off), src+uintptr(off), err)
		}
		return nil
	}
	for c := range min(k, chunks) {
		if err := copyOut(c); err != nil {
			return err
		}
	}
	for c := range chunks {
		slot := int(c % k)
		if err := st.Wait(slot); err != nil {
			return fmt.Errorf("%w: copy from the device: %w", ErrStaging, err)
		}
		m := min(chunk, n-c*chunk)
		if err := s.write(prefix, st.Buffer(slot)[:m], d); err != nil {
			return err
		}
		prefix = nil
		if next := c + k; next < chunks {
			if err := copyOut(next); err != nil {
				return err
			}
		}
	}
	return nil
}

// recvStaged reads n bytes into device memory at dst: each chunk is read
// into a free buffer and copied to the device while the next chunks are
// read. It returns once every byte is on the device, with the number of
// bytes read from the socket.
func (s *stream) recvStaged(st Stage, dst uintptr, n uint64, d time.Duration) (int, error) {
	k := uint64(st.Slots())
	chunk := uint64(len(st.Buffer(0)))
	done := 0
	for c := uint64(0); c*chunk < n; c++ {
		slot := int(c % k)
		// The buffer's previous copy to the device must be done first.
		if err := st.Wait(slot); err != nil {
			return done, fmt.Errorf("%w: copy to the device: %w", ErrStaging, err)
		}
		off := c * chunk
		m := min(chunk, n-off)
		got, err := s.readFull(st.Buffer(slot)[:m], d)
		done += got
		if err != nil {
			return done, err
		}
		if err := st.ToDevice(slot, dst+uintptr(off), int(m)); err != nil {
			return done, fmt.Errorf("%w: copy %d bytes to %#x on the device: %w", ErrStaging, m, dst+uintptr(off), err)
		}
	}
	for slot := range int(k) {
		if err := st.Wait(slot); err != nil {
			return done, fmt.Errorf("%w: copy to the device: %w", ErrStaging, err)
		}
	}
	return done, nil
}
