package dl

import (
	"errors"
	"fmt"
)

var (
	// ErrUnavailable matches every error about a library that is absent
	// (dlopen failed). Transports re-export it: it is how callers tell
	// "not installed here" from "broken".
	ErrUnavailable = errors.New("native library unavailable")
	// ErrMissingSymbol matches a dlsym failure: the library was found but
	// lacks a symbol that was asked for.
	ErrMissingSymbol = errors.New("native library lacks a symbol")
	// ErrClosed is returned by Sym on a closed handle.
	ErrClosed = errors.New("native library handle closed")
)

// Error is a loader failure. It keeps dlerror's text and matches
// ErrUnavailable (Op "dlopen") or ErrMissingSymbol (Op "dlsym").
type Error struct {
	// Lib is the library name given to Open.
	Lib string
	// Op is "dlopen", "dlsym" or "dlclose".
	Op string
	// Symbol is the symbol asked for (dlsym only).
	Symbol string
	// Msg is dlerror's text (or, without cgo, why there is no loader).
	Msg string
}

func (e *Error) Error() string {
	if e.Symbol != "" {
		return fmt.Sprintf("%s %s in %s: %s", e.Op, e.Symbol, e.Lib, e.Msg)
	}
	return fmt.Sprintf("%s %s: %s", e.Op, e.Lib, e.Msg)
}

// Is matches ErrUnavailable for open failures and ErrMissingSymbol for
// lookup failures.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrUnavailable:
		return e.Op == "dlopen"
	case ErrMissingSymbol:
		return e.Op == "dlsym"
	}
	return false
}
