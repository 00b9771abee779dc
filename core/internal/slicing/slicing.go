package slicing

import (
	"errors"
	"fmt"
)

var (
	// ErrNotRegistered matches every *RangeError: part of the request lies
	// outside the local spans or the remote spans.
	ErrNotRegistered = errors.New("range not registered")
	// ErrInvalidLimits means Limits.Max is zero.
	ErrInvalidLimits = errors.New("invalid slicing limits")
)

// Side says which memory a RangeError is about.
type Side uint8

// Sides of a transfer.
const (
	Local Side = iota
	Remote
)

func (s Side) String() string {
	if s == Remote {
		return "remote"
	}
	return "local"
}

// RangeError is a request part that no span covers, or a request that
// wraps the address space. It matches ErrNotRegistered.
type RangeError struct {
	// Side is the memory that lacks a span.
	Side Side
	// Addr and Length are the uncovered range: from the first address no
	// span holds to the end of the request.
	Addr, Length uint64
	// Wraps is true when the request runs past the end of the address space.
	Wraps bool
}

func (e *RangeError) Error() string {
	if e.Wraps {
		return fmt.Sprintf("%s range [%#x, +%d) wraps the address space", e.Side, e.Addr, e.Length)
	}
	return fmt.Sprintf("%s range [%#x, +%d) is not registered", e.Side, e.Addr, e.Length)
}

// Is makes errors.Is(err, ErrNotRegistered) true.
func (e *RangeError) Is(target error) bool { return target == ErrNotRegistered }

// Finder locates the span holding addr: a caller's reference to it and the
// span's end (exclusive). ok is false when no span holds addr. An end that
// is not above addr counts as not found.
type Finder[T any] func(addr uint64) (ref T, end uint64, ok bool)

// Piece is one part of a request.
type Piece[L, R any] struct {
	// Offset is where the piece starts, relative to the request's start.
	Offset uint64
	// Length is the piece's size in bytes (never 0).
	Length uint64
	// Local and Remote are the spans that hold the whole piece.
	Local  L
	Remote R
}

// Limits bound the size of pieces.
type Limits struct {
	// Max is the largest piece; it must not be zero.
	Max uint64
	// Fragment lets the rest of a request stay one piece while it is at most
	// Max+Fragment bytes, instead of leaving a small tail (Mooncake's
	// MC_SLICE_SIZE/MC_FRAGMENT_RATIO rule). Span boundaries still cut it.
	Fragment uint64
}

// Cut cuts the request [laddr, laddr+length) -> [raddr, raddr+length) into
// pieces (see the package doc). The pieces tile [0, length) in order. A
// zero length gives no pieces. On error the result is nil.
func Cut[L, R any](local Finder[L], remote Finder[R], laddr, raddr, length uint64, lim Limits) ([]Piece[L, R], error) {
	if lim.Max == 0 {
		return nil, fmt.Errorf("slice %d bytes: %w: zero maximum", length, ErrInvalidLimits)
	}
	if laddr+length < laddr {
		return nil, &RangeError{Side: Local, Addr: laddr, Length: length, Wraps: true}
	}
	if raddr+length < raddr {
		return nil, &RangeError{Side: Remote, Addr: raddr, Length: length, Wraps: true}
	}
	var out []Piece[L, R]
	if length > 0 {
		out = make([]Piece[L, R], 0, min(length/lim.Max+1, 1024))
	}
	for off := uint64(0); off < length; {
		rest := length - off
		la, ra := laddr+off, raddr+off
		lref, lend, ok := local(la)
		if !ok || lend <= la {
			return nil, &RangeError{Side: Local, Addr: la, Length: rest}
		}
		rref, rend, ok := remote(ra)
		if !ok || rend <= ra {
			return nil, &RangeError{Side: Remote, Addr: ra, Length: rest}
		}
		n := rest
		if n > lim.Max && n-lim.Max > lim.Fragment {
			n = lim.Max
		}
		n = min(n, lend-la, rend-ra)
		out = append(out, Piece[L, R]{Offset: off, Length: n, Local: lref, Remote: rref})
		off += n
	}
	return out, nil
}
