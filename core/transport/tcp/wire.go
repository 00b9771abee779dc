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
	case StatusPartial:
		return "partial"
	}
	return fmt.Sprintf("status(%#x)", uint32(s))
}

// The scatter-gather framing, spoken only between pymooncake engines that
// both publish SGKey (Mooncake peers never see it): one request carries
// many (address, length) ranges of the target and one body.
//
//	header    24 bytes: Size = the body's length (the ranges' sum),
//	          Addr = the number of ranges n, Opcode = FlagV2|FlagSG|op
//	table     n x 16 bytes: u64 LE address, u64 LE length, in body order
//	body      WRITE only: the ranges' bytes, back to back
//
// The target validates every range before it touches any byte. It answers
// with StatusOK when it accepts them all, or with StatusPartial followed
// by a bitmap of ceil(n/8) bytes in which bit i (byte i/8, bit i%8) is set
// for each range it refused; a WRITE's refused ranges are read and thrown
// away, a READ's are left out of the data that follows the status. Either
// way the connection stays usable and only the requests of the refused
// ranges fail. A table the target cannot trust (n or Size out of bounds,
// lengths that do not add up to Size) gets StatusRejected and a close.
const (
	// FlagSG marks a scatter-gather request; it is only sent with FlagV2.
	FlagSG = 0x40
	// SGKey is the descriptor key under which a pymooncake engine
	// publishes the version of the scatter-gather framing it serves.
	SGKey = "pymooncake_tcp_sg"
	// SGVersion is the framing version this package speaks.
	SGVersion = 1
	// MaxSGRanges bounds the ranges of one scatter-gather request.
	MaxSGRanges = 1 << 16
	// MaxSGBytes bounds the body of one scatter-gather request.
	MaxSGBytes = 1 << 30
	// sgEntrySize is the size of one table entry.
	sgEntrySize = 16
)

// StatusPartial answers a scatter-gather request of which the target
// refused some ranges; a bitmap of the refused ones follows.
const StatusPartial StatusFrame = 0x4D43545600000002

// isSG reports whether the header opens a scatter-gather request.
func (h Header) isSG() bool { return h.Opcode&(FlagV2|FlagSG) == FlagV2|FlagSG }

// opcode is the header's operation with the framing flags cleared.
func (h Header) opcode() uint8 { return h.Opcode &^ (FlagV2 | FlagSG) }

// Range is one entry of a scatter-gather table.
type Range struct{ Addr, Len uint64 }

// AppendSGTable appends the wire form of ranges to b.
func AppendSGTable(b []byte, ranges []Range) []byte {
	for _, r := range ranges {
		b = binary.LittleEndian.AppendUint64(b, r.Addr)
		b = binary.LittleEndian.AppendUint64(b, r.Len)
	}
	return b
}

// DecodeSGTable parses a table read off the wire into out (reused), and
// checks it against the header: every length positive, no range wrapping
// the address space, and the lengths adding up to size exactly.
func DecodeSGTable(b []byte, size uint64, out []Range) ([]Range, error) {
	if len(b)%sgEntrySize != 0 {
		return nil, fmt.Errorf("scatter-gather table of %d bytes: %w", len(b), ErrMalformed)
	}
	out = out[:0]
	var sum uint64
	for off := 0; off < len(b); off += sgEntrySize {
		r := Range{Addr: binary.LittleEndian.Uint64(b[off:]), Len: binary.LittleEndian.Uint64(b[off+8:])}
		if r.Len == 0 || r.Addr+r.Len < r.Addr || r.Len > size-sum {
			return nil, fmt.Errorf("scatter-gather range %d [%#x, +%d) of a %d-byte request: %w", off/sgEntrySize, r.Addr, r.Len, size, ErrMalformed)
		}
		sum += r.Len
		out = append(out, r)
	}
	if sum != size {
		return nil, fmt.Errorf("scatter-gather ranges add up to %d bytes, header says %d: %w", sum, size, ErrMalformed)
	}
	return out, nil
}

// checkSGHeader bounds what a scatter-gather header may ask for before its
// table is read.
func checkSGHeader(h Header) error {
	if h.Addr == 0 || h.Addr > MaxSGRanges || h.Size == 0 || h.Size > MaxSGBytes || h.Size < h.Addr {
		return fmt.Errorf("scatter-gather request of %d ranges and %d bytes: %w", h.Addr, h.Size, ErrMalformed)
	}
	return nil
}

// bitmapSize is the size of the refusal bitmap of n ranges.
func bitmapSize(n int) int { return (n + 7) / 8 }

func bitSet(b []byte, i int) bool { return b[i/8]&(1<<(i%8)) != 0 }
