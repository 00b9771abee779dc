package gpu

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// Defaults of StagingConfig.
const (
	DefaultChunk = 2 << 20
	DefaultSlots = 3
	DefaultIdle  = 16
)

// StagingConfig sizes the stages of a Staging. Zero values mean the
// defaults.
type StagingConfig struct {
	// Chunk is the size of each page-locked buffer, the unit in which a
	// transfer is pipelined. Default 2 MiB.
	Chunk int
	// Slots is the number of buffers of a stage, at least 2: while one is
	// on the wire, the others are being copied. Default 3.
	Slots int
	// Idle is how many released stages of each device are kept for reuse;
	// more are destroyed. Default 16.
	Idle int
}

func (c StagingConfig) withDefaults() (StagingConfig, error) {
	if c.Chunk == 0 {
		c.Chunk = DefaultChunk
	}
	if c.Slots == 0 {
		c.Slots = DefaultSlots
	}
	if c.Idle == 0 {
		c.Idle = DefaultIdle
	}
	switch {
	case c.Chunk < 4096 || c.Chunk > 1<<30:
		return c, fmt.Errorf("gpu: staging chunk %d outside [4096, 1 GiB]", c.Chunk)
	case c.Slots < 2 || c.Slots > 64:
		return c, fmt.Errorf("gpu: staging slots %d outside [2, 64]", c.Slots)
	case c.Idle < 0:
		return c, fmt.Errorf("gpu: negative idle stages %d", c.Idle)
	}
	return c, nil
}

// Staging lends Stages, creating them on demand and keeping released ones
// for reuse. It is safe for concurrent use.
type Staging struct {
	drv Driver
	cfg StagingConfig

	mu     sync.Mutex
	idle   map[int][]*Stage // guarded by mu
	out    int              // guarded by mu: stages lent, not yet released
	closed bool             // guarded by mu
}

// NewStaging returns a pool of stages over drv. drv stays the caller's; it
// must outlive the Staging.
func NewStaging(drv Driver, cfg StagingConfig) (*Staging, error) {
	if drv == nil {
		return nil, errors.New("gpu: nil driver")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Staging{drv: drv, cfg: cfg, idle: map[int][]*Stage{}}, nil
}

// Config is the effective configuration.
func (s *Staging) Config() StagingConfig { return s.cfg }

// Get lends a stage of device ord. The caller releases it.
func (s *Staging) Get(ord int) (*Stage, error) {
	if ord < 0 {
		return nil, fmt.Errorf("gpu: stage for device %d: %w", ord, ErrInvalidRange)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.out++
	if l := s.idle[ord]; len(l) > 0 {
		st := l[len(l)-1]
		s.idle[ord] = l[:len(l)-1]
		s.mu.Unlock()
		st.released = false
		return st, nil
	}
	s.mu.Unlock()
	st, err := s.newStage(ord)
	if err != nil {
		s.mu.Lock()
		s.out--
		s.mu.Unlock()
		return nil, err
	}
	return st, nil
}

// Outstanding is the number of stages lent and not yet released.
func (s *Staging) Outstanding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out
}

func (s *Staging) newStage(ord int) (*Stage, error) {
	cp, err := s.drv.NewCopier(ord, s.cfg.Slots)
	if err != nil {
		return nil, fmt.Errorf("gpu: staging copier on device %d: %w", ord, err)
	}
	base, err := s.drv.AllocHost(ord, s.cfg.Slots*s.cfg.Chunk)
	if err != nil {
		_ = cp.Close()
		return nil, fmt.Errorf("gpu: %d bytes of staging memory for device %d: %w", s.cfg.Slots*s.cfg.Chunk, ord, err)
	}
	return &Stage{s: s, ord: ord, cp: cp, base: base, chunk: s.cfg.Chunk, pending: make([]bool, s.cfg.Slots)}, nil
}

// put takes back a released stage.
func (s *Staging) put(st *Stage) {
	s.mu.Lock()
	s.out--
	keep := !s.closed && st.broken == nil && len(s.idle[st.ord]) < s.cfg.Idle
	if keep {
		s.idle[st.ord] = append(s.idle[st.ord], st)
	}
	s.mu.Unlock()
	if !keep {
		_ = st.destroy()
	}
}

// Close destroys the idle stages; stages still lent are destroyed when
// released. Later Gets fail with ErrClosed. Close is idempotent.
func (s *Staging) Close() error {
	s.mu.Lock()
	s.closed = true
	var all []*Stage
	for ord, l := range s.idle {
		all = append(all, l...)
		delete(s.idle, ord)
	}
	s.mu.Unlock()
	var errs []error
	for _, st := range all {
		errs = append(errs, st.destroy())
	}
	return errors.Join(errs...)
}

// Stage is a copier of one device and Slots page-locked buffers of Chunk
// bytes. It is used by one goroutine at a time, from Get to Release.
type Stage struct {
	s       *Staging
	ord     int
	cp      Copier
	base    uintptr
	chunk   int
	pending []bool // a copy marked the slot and was not waited for
	// broken is the first copy failure: the stage is destroyed, not reused.
	broken   error
	released bool
}

// ptr turns an address outside the Go heap into a pointer without tripping
// vet's unsafeptr check.
func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// Device is the stage's device ordinal.
func (st *Stage) Device() int { return st.ord }

// Slots is the number of buffers.
func (st *Stage) Slots() int { return len(st.pending) }

// Buffer is slot's page-locked buffer, Chunk bytes long. It must not be
// touched while a copy into or out of it is queued (until Wait).
func (st *Stage) Buffer(slot int) []byte {
	return unsafe.Slice((*byte)(ptr(st.base+uintptr(slot*st.chunk))), st.chunk)
}

func (st *Stage) check(slot, n int) error {
	if slot < 0 || slot >= len(st.pending) {
		return fmt.Errorf("slot %d of %d: %w", slot, len(st.pending), ErrBadSlot)
	}
	if n <= 0 || n > st.chunk {
		return fmt.Errorf("gpu: copy of %d bytes through a %d-byte buffer", n, st.chunk)
	}
	return nil
}

// ToHost queues a copy of n bytes from device address src into slot's
// buffer.
func (st *Stage) ToHost(slot int, src uintptr, n int) error {
	if err := st.check(slot, n); err != nil {
		return err
	}
	st.pending[slot] = true
	if err := st.cp.ToHost(slot, st.base+uintptr(slot*st.chunk), src, n); err != nil {
		st.broken = err
		return err
	}
	return nil
}

// ToDevice queues a copy of the first n bytes of slot's buffer to device
// address dst.
func (st *Stage) ToDevice(slot int, dst uintptr, n int) error {
	if err := st.check(slot, n); err != nil {
		return err
	}
	st.pending[slot] = true
	if err := st.cp.ToDevice(slot, dst, st.base+uintptr(slot*st.chunk), n); err != nil {
		st.broken = err
		return err
	}
	return nil
}

// Wait blocks until the copies queued on slot have run; the buffer is then
// free. Waiting on a slot with nothing queued returns at once.
func (st *Stage) Wait(slot int) error {
	if slot < 0 || slot >= len(st.pending) {
		return fmt.Errorf("slot %d of %d: %w", slot, len(st.pending), ErrBadSlot)
	}
	if !st.pending[slot] {
		return nil
	}
	st.pending[slot] = false
	if err := st.cp.Wait(slot); err != nil {
		st.broken = err
		return err
	}
	return nil
}

// Release waits for every queued copy, so that no copy outlives the loan,
// and gives the stage back. It must be called exactly once per Get; later
// calls do nothing.
func (st *Stage) Release() {
	if st.released {
		return
	}
	st.released = true
	for slot, p := range st.pending {
		if p {
			st.pending[slot] = false
			if err := st.cp.Wait(slot); err != nil && st.broken == nil {
				st.broken = err
			}
		}
	}
	st.s.put(st)
}

func (st *Stage) destroy() error {
	return errors.Join(st.cp.Close(), st.s.drv.FreeHost(st.base))
}
