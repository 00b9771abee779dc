package tcp

import (
	"context"
	"net"
	"strconv"

	"github.com/pymooncake/pymooncake/core/transport"
)

// wreq is one request on the wire: a plain request (a whole task or a
// slice of a split one, Mooncake's framing) or a scatter-gather request
// carrying several whole tasks, one range each.
type wreq struct {
	ctx   context.Context
	write bool
	v1    bool
	// n is the bytes the request moves.
	n uint64

	// A plain request moves n bytes between local and remote for task.
	task   *transport.Task
	local  uintptr
	remote uint64

	// A scatter-gather request moves each task of sg (local Local,
	// remote Remote, Length bytes), in order.
	sg []*transport.Task

	// retried is set once the request was put back in its lane's queue
	// after a connection failure that did not let it run (a pooled
	// connection closed an instant earlier, a rejection that closed the
	// connection under later requests): it is not put back twice for that.
	retried bool
}

// done reports the request's success: every task (or part) moved its
// bytes.
func (w *wreq) done() {
	if w.sg == nil {
		w.task.PartDone(w.n, nil)
		return
	}
	for _, t := range w.sg {
		t.PartDone(t.Length, nil)
	}
}

// fail reports err for every task (or part) of the request.
func (w *wreq) fail(p *peer, conn bool, err error) {
	if w.sg == nil {
		w.task.PartDone(0, p.requestError(w.write, w.remote, w.n, conn, err))
		return
	}
	for _, t := range w.sg {
		t.PartDone(0, p.requestError(w.write, t.Remote, t.Length, conn, err))
	}
}

// partial reports a scatter-gather request's outcome: the tasks whose
// ranges the target refused (set in the bitmap) fail with ErrRejected, the
// others succeed.
func (w *wreq) partial(p *peer, refused []byte) {
	for i, t := range w.sg {
		if bitSet(refused, i) {
			t.PartDone(0, p.requestError(w.write, t.Remote, t.Length, false, ErrRejected))
		} else {
			t.PartDone(t.Length, nil)
		}
	}
}

// requestError names the peer and the request of a failure.
func (p *peer) requestError(write bool, remote, n uint64, conn bool, err error) error {
	op := "read"
	if write {
		op = "write"
	}
	return &PeerError{Peer: p.key.name, Addr: p.addr, Op: op, Remote: remote, Size: n, Conn: conn, Err: err}
}

// submitError is the error of a task refused before it reached a lane.
func submitError(pe transport.Peer, task *transport.Task, err error) error {
	port := 0
	if pe.Desc != nil {
		port = pe.Desc.TCPDataPort
	}
	return &PeerError{
		Peer: pe.Name, Addr: net.JoinHostPort(pe.Host, strconv.Itoa(port)),
		Op: task.Opcode.String(), Remote: task.Remote, Size: task.Length, Err: err,
	}
}

// encode writes the request's header (and, for scatter-gather, its table)
// into buf, reused, and returns it.
func (w *wreq) encode(buf []byte) []byte {
	op := uint8(transport.Read)
	if w.write {
		op = opWrite
	}
	if !w.v1 {
		op |= FlagV2
	}
	var h Header
	if w.sg == nil {
		h = Header{Size: w.n, Addr: w.remote, Opcode: op}
	} else {
		h = Header{Size: w.n, Addr: uint64(len(w.sg)), Opcode: op | FlagSG}
	}
	var hb [HeaderSize]byte
	h.Encode(&hb)
	buf = append(buf[:0], hb[:]...)
	for _, t := range w.sg {
		buf = AppendSGTable(buf, []Range{{Addr: t.Remote, Len: t.Length}})
	}
	return buf
}

// locals appends the local memory of the request to bufs: one slice for a
// plain request, one per task for a scatter-gather one.
func (w *wreq) locals(bufs [][]byte) [][]byte {
	if w.sg == nil {
		return append(bufs, memory(w.local, w.n))
	}
	for _, t := range w.sg {
		bufs = append(bufs, memory(t.Local, t.Length))
	}
	return bufs
}
