package cudaipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/pymooncake/pymooncake/core/gpu"
)

// The endpoint's protocol, between pymooncake engines only: one message per
// SOCK_SEQPACKET packet on an abstract Unix socket, little-endian, the
// first byte its type. A VMM allocation's file descriptor travels with its
// openReply as SCM_RIGHTS.
//
//	open      initiator → target  id u64, addr u64: export the allocation
//	                              holding addr, which must lie in a
//	                              registered GPU buffer
//	opened    target → initiator  id u64, status u8, kind u8, base u64,
//	                              size u64, grant u64, grantLen u64,
//	                              uuid [16], legacy [64], textLen u16, text
//	drop      target → initiator  seq u64, addr u64, len u64: the buffer is
//	                              being unregistered; unmap it
//	dropped   initiator → target  seq u64: done
const (
	msgOpen    byte = 1
	msgOpened  byte = 2
	msgDrop    byte = 3
	msgDropped byte = 4
)

// Statuses of an openReply.
const (
	statusOK byte = iota
	// statusRejected: addr is not in a registered GPU buffer.
	statusRejected
	// statusNotExportable: the memory cannot be shared this way (a pool's,
	// VMM memory without a POSIX handle type).
	statusNotExportable
	// statusFailed: the export failed; text says why.
	statusFailed
)

// maxMessage bounds a packet; maxText bounds an openReply's text.
const (
	maxMessage = 512
	maxText    = 256
)

var errProtocol = errors.New("cudaipc: malformed message from peer")

type openRequest struct{ id, addr uint64 }

type openReply struct {
	id         uint64
	status     byte
	kind       gpu.IPCKind
	base, size uint64
	// grant is the part of the allocation this initiator may touch: the
	// registered buffer holding addr, within the allocation.
	grant, grantLen uint64
	device          gpu.UUID
	legacy          [gpu.LegacyHandleSize]byte
	text            string
}

type dropRequest struct{ seq, addr, length uint64 }

type dropReply struct{ seq uint64 }

const openedFixed = 1 + 8 + 1 + 1 + 4*8 + 16 + gpu.LegacyHandleSize + 2

func (m openRequest) encode() []byte {
	b := make([]byte, 17)
	b[0] = msgOpen
	binary.LittleEndian.PutUint64(b[1:], m.id)
	binary.LittleEndian.PutUint64(b[9:], m.addr)
	return b
}

func (m openReply) encode() []byte {
	text := m.text
	if len(text) > maxText {
		text = text[:maxText]
	}
	b := make([]byte, openedFixed, openedFixed+len(text))
	b[0] = msgOpened
	le := binary.LittleEndian
	le.PutUint64(b[1:], m.id)
	b[9], b[10] = m.status, byte(m.kind)
	le.PutUint64(b[11:], m.base)
	le.PutUint64(b[19:], m.size)
	le.PutUint64(b[27:], m.grant)
	le.PutUint64(b[35:], m.grantLen)
	copy(b[43:59], m.device[:])
	copy(b[59:59+gpu.LegacyHandleSize], m.legacy[:])
	le.PutUint16(b[openedFixed-2:], uint16(len(text)))
	return append(b, text...)
}

func (m dropRequest) encode() []byte {
	b := make([]byte, 25)
	b[0] = msgDrop
	binary.LittleEndian.PutUint64(b[1:], m.seq)
	binary.LittleEndian.PutUint64(b[9:], m.addr)
	binary.LittleEndian.PutUint64(b[17:], m.length)
	return b
}

func (m dropReply) encode() []byte {
	b := make([]byte, 9)
	b[0] = msgDropped
	binary.LittleEndian.PutUint64(b[1:], m.seq)
	return b
}

// decode reads one message: an openRequest, openReply, dropRequest or
// dropReply. Peer input: anything else is errProtocol.
func decode(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", errProtocol)
	}
	le := binary.LittleEndian
	switch b[0] {
	case msgOpen:
		if len(b) != 17 {
			break
		}
		return openRequest{id: le.Uint64(b[1:]), addr: le.Uint64(b[9:])}, nil
	case msgOpened:
		if len(b) < openedFixed {
			break
		}
		n := int(le.Uint16(b[openedFixed-2:]))
		if n > maxText || len(b) != openedFixed+n {
			break
		}
		m := openReply{
			id: le.Uint64(b[1:]), status: b[9], kind: gpu.IPCKind(b[10]),
			base: le.Uint64(b[11:]), size: le.Uint64(b[19:]), grant: le.Uint64(b[27:]), grantLen: le.Uint64(b[35:]),
			text: string(b[openedFixed:]),
		}
		copy(m.device[:], b[43:59])
		copy(m.legacy[:], b[59:59+gpu.LegacyHandleSize])
		if m.status > statusFailed {
			break
		}
		return m, nil
	case msgDrop:
		if len(b) != 25 {
			break
		}
		return dropRequest{seq: le.Uint64(b[1:]), addr: le.Uint64(b[9:]), length: le.Uint64(b[17:])}, nil
	case msgDropped:
		if len(b) != 9 {
			break
		}
		return dropReply{seq: le.Uint64(b[1:])}, nil
	}
	return nil, fmt.Errorf("%w: type %d, %d bytes", errProtocol, b[0], len(b))
}

// send writes one message, with fd as SCM_RIGHTS when fd >= 0.
func send(c *net.UnixConn, b []byte, fd int) error {
	var oob []byte
	if fd >= 0 {
		oob = syscall.UnixRights(fd)
	}
	n, _, err := c.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return err
	}
	if n != len(b) {
		return fmt.Errorf("cudaipc: short write of %d bytes of %d", n, len(b))
	}
	return nil
}

// recv reads one message and the descriptors that came with it, which the
// caller owns (close-on-exec).
func recv(c *net.UnixConn, buf, oob []byte) ([]byte, []int, error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		fds = parseRights(oob[:oobn])
	}
	if err != nil {
		closeAll(fds)
		return nil, nil, err
	}
	if n == 0 {
		closeAll(fds)
		return nil, nil, net.ErrClosed
	}
	if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
		closeAll(fds)
		return nil, nil, fmt.Errorf("%w: truncated (%d bytes, flags %#x)", errProtocol, n, flags)
	}
	return buf[:n], fds, nil
}

func parseRights(oob []byte) []int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if got, err := syscall.ParseUnixRights(&m); err == nil {
			for _, fd := range got {
				syscall.CloseOnExec(fd)
			}
			fds = append(fds, got...)
		}
	}
	return fds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		_ = syscall.Close(fd)
	}
}
