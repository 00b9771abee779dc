package hostmem

import (
	"encoding/binary"
	"fmt"
)

// The control protocol, over a SOCK_SEQPACKET Unix socket (one message per
// send, boundaries kept). Every message starts with an 8-byte header:
// magic "PMHM", version, kind; integers are little endian.
//
//	hello   I->T  path flags (bit 0: cross-memory attach, bit 1: ring)
//	welcome T->I  status, target pid, table address and size, capacity;
//	              SCM_RIGHTS: the table (read-only), the initiator's pin area
//	use     I->T  path (cma or ring), ring slots, ring size;
//	              SCM_RIGHTS with ring: the ring's memfd (sealed)
//	ready   T->I  status
//	request I->T  (ring) sequence number, n entries of {remote address,
//	              ring offset, length, opcode}
//	reply   T->I  (ring) sequence number, n statuses
//
// The target answers a hello with a welcome, a use with a ready; with the
// ring, each request with one reply, in order. Anything else, or a message
// of the wrong size, drops the connection.

const (
	wireMagic   = 0x4d484d50 // "PMHM"
	wireVersion = 1

	kindHello   = 1
	kindWelcome = 2
	kindUse     = 3
	kindReady   = 4
	kindRequest = 5
	kindReply   = 6

	pathCMA  = 1
	pathRing = 2

	flagCMA  = 1
	flagRing = 2

	statusOK       = 0
	statusRejected = 1 // not inside one registered region
	statusNotHost  = 2 // inside a region of GPU memory
	statusBadRing  = 3 // the ring range is outside the ring
	statusRefused  = 4 // a setup step failed on the target
	statusBusy     = 5 // the target serves Config.MaxConns initiators already

	headerLen     = 8
	helloLen      = headerLen + 8
	welcomeLen    = headerLen + 32
	useLen        = headerLen + 16
	readyLen      = headerLen + 8
	reqHeadLen    = headerLen + 16
	reqEntryLen   = 24
	replyHeadLen  = headerLen + 16
	maxReqEntries = 1024
	// maxMsg is the largest message either side sends.
	maxMsg = reqHeadLen + maxReqEntries*reqEntryLen
)

var le = binary.LittleEndian

func putHeader(b []byte, kind uint16) {
	le.PutUint32(b[0:], wireMagic)
	le.PutUint16(b[4:], wireVersion)
	le.PutUint16(b[6:], kind)
}

// header checks b's header and returns its kind.
func header(b []byte) (uint16, error) {
	if len(b) < headerLen || le.Uint32(b) != wireMagic {
		return 0, fmt.Errorf("%d-byte message without the magic: %w", len(b), ErrMalformed)
	}
	if v := le.Uint16(b[4:]); v != wireVersion {
		return 0, fmt.Errorf("version %d, want %d: %w", v, wireVersion, ErrMalformed)
	}
	return le.Uint16(b[6:]), nil
}

// expect checks that b is a message of kind and exactly size bytes.
func expect(b []byte, kind uint16, size int) error {
	k, err := header(b)
	if err != nil {
		return err
	}
	if k != kind || len(b) != size {
		return fmt.Errorf("message of kind %d and %d bytes, want kind %d of %d: %w", k, len(b), kind, size, ErrMalformed)
	}
	return nil
}

type welcome struct {
	status    uint32
	pid       uint32
	tableAddr uint64
	tableSize uint64
	capacity  uint32
}

func (w welcome) marshal() []byte {
	b := make([]byte, welcomeLen)
	putHeader(b, kindWelcome)
	le.PutUint32(b[8:], w.status)
	le.PutUint32(b[12:], w.pid)
	le.PutUint64(b[16:], w.tableAddr)
	le.PutUint64(b[24:], w.tableSize)
	le.PutUint32(b[32:], w.capacity)
	return b
}

func parseWelcome(b []byte) (welcome, error) {
	if err := expect(b, kindWelcome, welcomeLen); err != nil {
		return welcome{}, err
	}
	return welcome{status: le.Uint32(b[8:]), pid: le.Uint32(b[12:]), tableAddr: le.Uint64(b[16:]),
		tableSize: le.Uint64(b[24:]), capacity: le.Uint32(b[32:])}, nil
}

type use struct {
	path      uint32
	slots     uint32
	ringBytes uint64
}

func (u use) marshal() []byte {
	b := make([]byte, useLen)
	putHeader(b, kindUse)
	le.PutUint32(b[8:], u.path)
	le.PutUint32(b[12:], u.slots)
	le.PutUint64(b[16:], u.ringBytes)
	return b
}

func parseUse(b []byte) (use, error) {
	if err := expect(b, kindUse, useLen); err != nil {
		return use{}, err
	}
	return use{path: le.Uint32(b[8:]), slots: le.Uint32(b[12:]), ringBytes: le.Uint64(b[16:])}, nil
}

func helloMsg(flags uint32) []byte {
	b := make([]byte, helloLen)
	putHeader(b, kindHello)
	le.PutUint32(b[8:], flags)
	return b
}

func parseHello(b []byte) (uint32, error) {
	if err := expect(b, kindHello, helloLen); err != nil {
		return 0, err
	}
	return le.Uint32(b[8:]), nil
}

func readyMsg(status uint32) []byte {
	b := make([]byte, readyLen)
	putHeader(b, kindReady)
	le.PutUint32(b[8:], status)
	return b
}

func parseReady(b []byte) (uint32, error) {
	if err := expect(b, kindReady, readyLen); err != nil {
		return 0, err
	}
	return le.Uint32(b[8:]), nil
}

// reqEntry is one range of a ring request.
type reqEntry struct {
	remote  uint64
	ringOff uint64
	length  uint32
	op      uint8
}

// appendRequest encodes a request into b (reused).
func appendRequest(b []byte, seq uint64, ents []reqEntry) []byte {
	b = b[:0]
	b = append(b, make([]byte, reqHeadLen)...)
	putHeader(b, kindRequest)
	le.PutUint64(b[8:], seq)
	le.PutUint32(b[16:], uint32(len(ents)))
	var e [reqEntryLen]byte
	for _, x := range ents {
		le.PutUint64(e[0:], x.remote)
		le.PutUint64(e[8:], x.ringOff)
		le.PutUint32(e[16:], x.length)
		e[20] = x.op
		b = append(b, e[:]...)
	}
	return b
}

// parseRequest decodes a request into ents (reused).
func parseRequest(b []byte, ents []reqEntry) (uint64, []reqEntry, error) {
	k, err := header(b)
	if err != nil {
		return 0, nil, err
	}
	if k != kindRequest || len(b) < reqHeadLen {
		return 0, nil, fmt.Errorf("message of kind %d and %d bytes, want a request: %w", k, len(b), ErrMalformed)
	}
	n := int(le.Uint32(b[16:]))
	if n < 1 || n > maxReqEntries || len(b) != reqHeadLen+n*reqEntryLen {
		return 0, nil, fmt.Errorf("request of %d entries in %d bytes: %w", n, len(b), ErrMalformed)
	}
	ents = ents[:0]
	for i := 0; i < n; i++ {
		e := b[reqHeadLen+i*reqEntryLen:]
		ents = append(ents, reqEntry{remote: le.Uint64(e[0:]), ringOff: le.Uint64(e[8:]), length: le.Uint32(e[16:]), op: e[20]})
	}
	return le.Uint64(b[8:]), ents, nil
}

// appendReply encodes a reply into b (reused).
func appendReply(b []byte, seq uint64, status []uint8) []byte {
	b = b[:0]
	b = append(b, make([]byte, replyHeadLen)...)
	putHeader(b, kindReply)
	le.PutUint64(b[8:], seq)
	le.PutUint32(b[16:], uint32(len(status)))
	return append(b, status...)
}

// parseReply decodes a reply; the statuses alias b.
func parseReply(b []byte) (uint64, []uint8, error) {
	k, err := header(b)
	if err != nil {
		return 0, nil, err
	}
	if k != kindReply || len(b) < replyHeadLen {
		return 0, nil, fmt.Errorf("message of kind %d and %d bytes, want a reply: %w", k, len(b), ErrMalformed)
	}
	n := int(le.Uint32(b[16:]))
	if n < 1 || n > maxReqEntries || len(b) != replyHeadLen+n {
		return 0, nil, fmt.Errorf("reply of %d statuses in %d bytes: %w", n, len(b), ErrMalformed)
	}
	return le.Uint64(b[8:]), b[replyHeadLen:], nil
}
