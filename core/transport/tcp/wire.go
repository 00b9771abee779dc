package tcp

import (
	"encoding/binary"
	"fmt"
)

// HeaderSize is the size of Mooncake's SessionHeader on the wire:
// u64 LE size, u64 LE addr, u8 opcode, 7 bytes of padding.
const HeaderSize = 24

// FlagV2 is set in the header opcode by v2 clients; the low 7 bits then
// carry the opcode (1 = WRITE, anything else = READ).
const FlagV2 = 0x80

// opWrite is the WRITE opcode; every other value (after masking FlagV2) is
// served as READ, as Mooncake's servers do.
const opWrite = 1

// Header is one request: move Size bytes at the target's absolute virtual
// address Addr. Opcode includes FlagV2 when the client speaks v2.
type Header struct {
	Size, Addr uint64
	Opcode     uint8
}

// Encode writes h into b, with zero padding.
func (h Header) Encode(b *[HeaderSize]byte) {
	binary.LittleEndian.PutUint64(b[0:8], h.Size)
	binary.LittleEndian.PutUint64(b[8:16], h.Addr)
	b[16] = h.Opcode
	clear(b[17:])
}

// DecodeHeader reads a header from b. The padding is ignored: Mooncake sends
// it uninitialised.
func DecodeHeader(b *[HeaderSize]byte) Header {
	return Header{
		Size:   binary.LittleEndian.Uint64(b[0:8]),
		Addr:   binary.LittleEndian.Uint64(b[8:16]),
		Opcode: b[16],
	}
}

// isWrite reports whether the header asks to write into the target.
func (h Header) isWrite() bool { return h.Opcode&^FlagV2 == opWrite }

// isV2 reports whether the client expects status frames.
func (h Header) isV2() bool { return h.Opcode&FlagV2 != 0 }

// StatusFrame is a v2 status frame: u64 LE whose high 32 bits are the magic
// "MCTV" (0x4D435456) and whose low 32 bits are the status code.
type StatusFrame uint64

const (
	// StatusOK precedes READ data and acknowledges an applied WRITE body.
	// Wire bytes: 00 00 00 00 56 54 43 4D.
	StatusOK StatusFrame = 0x4D43545600000000
	// StatusRejected is sent, before closing, for an address range that no
	// registered buffer contains.
	StatusRejected StatusFrame = 0x4D43545600000001
)

const statusMagic = 0x4D435456

// statusSize is the size of a status frame on the wire.
const statusSize = 8

// EncodeStatus returns the wire bytes of s.
func EncodeStatus(s StatusFrame) [8]byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(s))
	return b
}

// DecodeStatus parses a status frame. A frame without the magic yields
// ErrLegacyPeer (and a zero frame); any frame with the magic is returned as
// is, for the caller to compare with StatusOK and StatusRejected.
func DecodeStatus(b [8]byte) (StatusFrame, error) {
	v := binary.LittleEndian.Uint64(b[:])
	if v>>32 != statusMagic {
		return 0, fmt.Errorf("status frame %#016x: %w", v, ErrLegacyPeer)
	}
	return StatusFrame(v), nil
}

func (s StatusFrame) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusRejected:
		return "rejected"
	}
	return fmt.Sprintf("status(%#x)", uint32(s))
}
