package dl

import (
	"fmt"
	"sync"
	"unsafe"
)

// Library is one reference to an opened library. It is safe for concurrent
// use; Close releases the reference once.
type Library struct {
	name string
	lib  *loaded

	mu     sync.Mutex
	closed bool // +checklocks:mu
}

// loaded is a dlopen'd library shared by every handle of the same name.
type loaded struct {
	handle unsafe.Pointer
	refs   int // +checklocks:registryMu
}

var (
	registryMu sync.Mutex
	registry   = map[string]*loaded{} // +checklocks:registryMu
)

// Open loads the library called name (a soname such as "libibverbs.so.1"
// or a path) with RTLD_NOW|RTLD_LOCAL, or takes another reference to it if
// it is loaded already. A failure matches ErrUnavailable and carries
// dlerror's text.
func Open(name string) (*Library, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if l, ok := registry[name]; ok {
		l.refs++
		return &Library{name: name, lib: l}, nil
	}
	h, msg := sysOpen(name)
	if h == nil {
		return nil, &Error{Lib: name, Op: "dlopen", Msg: msg}
	}
	l := &loaded{handle: h, refs: 1}
	registry[name] = l
	return &Library{name: name, lib: l}, nil
}

// Name is the name the library was opened by.
func (l *Library) Name() string { return l.name }

// Sym returns the address of symbol, or an error matching ErrMissingSymbol
// with dlerror's text. The address is only valid until the last handle of
// the library is closed.
func (l *Library) Sym(symbol string) (unsafe.Pointer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("dlsym %s in %s: %w", symbol, l.name, ErrClosed)
	}
	p, msg := sysSym(l.lib.handle, symbol)
	if p == nil {
		return nil, &Error{Lib: l.name, Op: "dlsym", Symbol: symbol, Msg: msg}
	}
	return p, nil
}

// Close releases this reference; the library is unloaded with the last
// one. Closing twice is a no-op.
func (l *Library) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	registryMu.Lock()
	defer registryMu.Unlock()
	l.lib.refs--
	if l.lib.refs > 0 {
		return nil
	}
	delete(registry, l.name)
	if msg := sysClose(l.lib.handle); msg != "" {
		return &Error{Lib: l.name, Op: "dlclose", Msg: msg}
	}
	return nil
}

// Refs is the number of open handles of the library called name; tests
// use it to check that every handle was closed.
func Refs(name string) int {
	registryMu.Lock()
	defer registryMu.Unlock()
	if l, ok := registry[name]; ok {
		return l.refs
	}
	return 0
}
