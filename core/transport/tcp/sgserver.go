package tcp

import (
	"fmt"

	"go.uber.org/zap"
)

// scratchSize is the size of the buffer a refused WRITE range's bytes are
// read into and dropped.
const scratchSize = 64 << 10

// serveSG serves a scatter-gather request whose header is h (wire.go says
// the format). Every range is validated before any byte is touched;
// refused ranges are reported in the reply's bitmap and their bytes are
// dropped (WRITE) or left out (READ). It returns an error when the
// connection must be closed: a table that cannot be trusted, or I/O that
// failed.
func (s *server) serveSG(st *serverConn, h Header) error {
	if err := checkSGHeader(h); err != nil {
		_ = st.write(rejectedFrame[:], nil, s.io)
		return err
	}
	n := int(h.Addr)
	st.table = grow(st.table, n*sgEntrySize)
	if _, err := st.readFull(st.table, s.io); err != nil {
		return err
	}
	ranges, err := DecodeSGTable(st.table, h.Size, st.ranges)
	if err != nil {
		_ = st.write(rejectedFrame[:], nil, s.io)
		return err
	}
	st.ranges = ranges
	st.refused = grow(st.refused, bitmapSize(n))
	clear(st.refused)
	refused, staged := 0, false
	st.pins = st.pins[:0]
	defer st.unpin()
	for i, r := range ranges {
		pin, ok := s.pin(r.Addr, r.Len)
		if !ok {
			st.refused[i/8] |= 1 << (i % 8)
			refused++
			continue
		}
		st.pins = append(st.pins, pin)
		if s.gpu != nil && s.gpu.Device(r.Addr, r.Len) >= 0 {
			staged = true
		}
	}
	if refused > 0 {
		s.log.Warn("tcp server: scatter-gather ranges rejected: not registered",
			zap.Stringer("peer", st.c.RemoteAddr()), zap.Int("refused", refused), zap.Int("ranges", n))
	}
	status := okFrame[:]
	if refused > 0 {
		status = partialFrame[:]
	}
	write := h.opcode() == opWrite
	if staged {
		return s.serveSGStaged(st, write, status, refused > 0)
	}
	st.bufs = st.bufs[:0]
	if write {
		if refused > 0 && st.scratch == nil {
			st.scratch = make([]byte, scratchSize)
		}
		for i, r := range ranges {
			if !bitSet(st.refused, i) {
				st.bufs = append(st.bufs, memory(uintptr(r.Addr), r.Len))
				continue
			}
			for left := r.Len; left > 0; {
				k := min(left, scratchSize)
				st.bufs = append(st.bufs, st.scratch[:k])
				left -= k
			}
		}
		_, err := st.readv(st.bufs, s.io)
		clear(st.bufs)
		if err != nil {
			return err
		}
		return s.reply(st, status, refused > 0, nil)
	}
	for i, r := range ranges {
		if !bitSet(st.refused, i) {
			st.bufs = append(st.bufs, memory(uintptr(r.Addr), r.Len))
		}
	}
	err = s.reply(st, status, refused > 0, st.bufs)
	clear(st.bufs)
	return err
}

// reply sends the status frame, the bitmap when some ranges were refused,
// and data (a READ's accepted ranges), in as few writes as it can.
func (s *server) reply(st *serverConn, status []byte, partial bool, data [][]byte) error {
	head := status
	if partial {
		head = append(append(st.hdr[:0:0], status...), st.refused...)
	}
	if len(data) == 0 {
		return st.write(head, nil, s.io)
	}
	st.out = append(append(st.out[:0], head), data...)
	err := st.writev(st.out, s.io)
	clear(st.out)
	return err
}

// serveSGStaged serves a scatter-gather request some of whose ranges are
// GPU memory: range by range, GPU ones through a stage's page-locked
// buffers.
func (s *server) serveSGStaged(st *serverConn, write bool, status []byte, partial bool) error {
	if !write {
		if err := s.reply(st, status, partial, nil); err != nil {
			return err
		}
	}
	for i, r := range st.ranges {
		if bitSet(st.refused, i) {
			if write {
				if err := s.drain(st, r.Len); err != nil {
					return err
				}
			}
			continue
		}
		stage, err := stageFor(s.gpu, r.Addr, r.Len)
		if err != nil {
			return err
		}
		switch {
		case stage != nil && write:
			_, err = st.recvStaged(stage, uintptr(r.Addr), r.Len, s.io)
		case stage != nil:
			err = st.sendStaged(nil, stage, uintptr(r.Addr), r.Len, s.io)
		case write:
			_, err = st.readFull(memory(uintptr(r.Addr), r.Len), s.io)
		default:
			err = st.write(nil, memory(uintptr(r.Addr), r.Len), s.io)
		}
		if stage != nil {
			stage.Release()
		}
		if err != nil {
			return fmt.Errorf("range %d: %w", i, err)
		}
	}
	if write {
		return s.reply(st, status, partial, nil)
	}
	return nil
}

// drain reads and drops n bytes.
func (s *server) drain(st *serverConn, n uint64) error {
	if st.scratch == nil {
		st.scratch = make([]byte, scratchSize)
	}
	for n > 0 {
		k := min(n, scratchSize)
		if _, err := st.readFull(st.scratch[:k], s.io); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// unpin releases the pins of a scatter-gather request.
func (st *serverConn) unpin() {
	for _, p := range st.pins {
		p.Unpin()
	}
	clear(st.pins)
	st.pins = st.pins[:0]
}

// grow returns b resized to n bytes, reallocated only when too small.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}
