package tcp

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// DefaultPollBudget is how long a connection is polled for its next bytes
// before its goroutine parks in the netpoller (PYMOONCAKE_TCP_POLL_US).
// Parking and the wake-up of a goroutine on another CPU cost more than a
// small request's whole round trip on loopback; polling trades CPU for that
// latency, as Mooncake's busy-polling initiator does.
const DefaultPollBudget = 50 * time.Microsecond

// MaxPollBudget bounds Config.PollBudget.
const MaxPollBudget = 10 * time.Millisecond

// poller waits a bounded time, without parking, for a connection to have
// bytes to read. wait and idle only peek; waitInto reads what arrives into
// the caller's buffer (at most the frame the caller expects, so it never
// takes bytes of what follows) and hands back EOF and errors as a Read
// would; the caller's deadline-bounded Read does the rest. A poller
// belongs to the goroutine that owns its connection.
type poller struct {
	rc     syscall.RawConn
	budget time.Duration
	// stop, checked every few attempts, ends the polling early (the
	// transport is closing or the request's ctx ended).
	stop  func() bool
	spinF func(fd uintptr) // p.spin and p.peek, bound once so that
	peekF func(fd uintptr) // wait and idle allocate nothing
	ready bool
	b     [1]byte
	// dst, while waitInto runs, receives what arrives; n and err say what
	// the receiving gave.
	dst []byte
	n   int
	err error
	// skip and misses make polling adaptive: a wait whose budget ran out
	// means the peer answers slower than the budget, typically because the
	// cores are oversubscribed, where spinning only steals CPU from the
	// peer. Each miss in a row doubles the number of following waits that
	// park at once (up to maxSkip); a hit resets it.
	skip, misses int
}

// maxSkip bounds how many waits in a row park without polling after
// repeated misses, so a poller tries again at least that often.
const maxSkip = 64

// newPoller returns a poller for c, or nil (which never polls) when budget
// is not positive or c exposes no descriptor.
func newPoller(c net.Conn, budget time.Duration, stop func() bool) *poller {
	sc, ok := c.(syscall.Conn)
	if budget <= 0 || !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &poller{rc: rc, budget: budget, stop: stop}
	p.spinF, p.peekF = p.spin, p.peek
	return p
}

// wait polls until the connection is readable (bytes, EOF or an error are
// waiting), the budget is spent or stop reports true; it reports whether the
// connection became readable. Closing the connection meanwhile waits for
// wait to return, at most the budget.
func (p *poller) wait() bool {
	if p == nil {
		return false
	}
	if p.skip > 0 {
		p.skip--
		return false
	}
	p.ready = false
	if p.rc.Control(p.spinF) != nil {
		return false
	}
	if p.ready {
		p.misses = 0
	} else {
		p.misses++
		p.skip = min(1<<min(p.misses, 6), maxSkip)
	}
	return p.ready
}

// waitInto is wait that reads what arrives into b instead of leaving it
// for the caller's next Read: on the hot path, one system call fewer per
// request on each side (the peek that finds the bytes is the read). It
// returns how many bytes it read, 0 when nothing came within the budget or
// polling is off or backing off; and, when the connection reported its end
// or an error instead of bytes, that error (io.EOF, or the system call's
// as a *net.OpError), which the caller treats as its Read's.
func (p *poller) waitInto(b []byte) (int, error) {
	if p == nil || len(b) == 0 {
		return 0, nil
	}
	p.dst = b
	ready := p.wait()
	n, err := p.n, p.err
	p.dst, p.n, p.err = nil, 0, nil
	if !ready {
		return 0, nil
	}
	return n, err
}

func (p *poller) spin(fd uintptr) {
	start := time.Now()
	for i := 1; ; i++ {
		if p.try(fd) {
			p.ready = true
			return
		}
		if i%16 == 0 && p.stop != nil && p.stop() || time.Since(start) >= p.budget {
			return
		}
		// No runtime.Gosched here: a synchronous call's goroutine is locked
		// to the Python thread, and yielding hands that thread off and needs
		// a cross-CPU wake-up to resume, the very cost polling avoids. The
		// budget is short; Go preempts a spinning goroutine if it must.
	}
}

// idle reports whether nothing is waiting on the connection: no bytes, no
// EOF, no error. A pooled client connection that is not idle was closed or
// reset by the peer, or holds bytes that nobody asked for.
func (p *poller) idle() bool {
	if p == nil {
		return true
	}
	p.ready = true
	return p.rc.Control(p.peekF) == nil && !p.ready
}

func (p *poller) peek(fd uintptr) { p.ready = readable(fd, &p.b) }

// try reports whether the connection has something to report: with dst
// set, it reads into dst without blocking and records what it got.
func (p *poller) try(fd uintptr) bool {
	if p.dst == nil {
		return readable(fd, &p.b)
	}
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.dst[0])), uintptr(len(p.dst)),
		syscall.MSG_DONTWAIT, 0, 0)
	switch {
	case errno == syscall.EAGAIN || errno == syscall.EINTR:
		return false
	case errno != 0:
		p.err = &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("recvfrom", errno)}
	case n == 0:
		p.err = io.EOF
	default:
		p.n = int(n)
	}
	return true
}

// readable peeks at one byte without blocking: false only when the socket
// has nothing to report yet (EAGAIN, or a signal interrupted the peek).
func readable(fd uintptr, b *[1]byte) bool {
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(b)), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno != syscall.EAGAIN && errno != syscall.EINTR
}
