package handshake

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MsgType is the type byte of a handshake frame, numbered as Mooncake's
// HandShakeRequestType.
type MsgType uint8

const (
	// Connection carries a HandShakeDesc both ways (RDMA/barex endpoint
	// setup).
	Connection MsgType = 0
	// Metadata asks the peer for its segment descriptor (P2P mode).
	Metadata MsgType = 1
	// Notify delivers a NotifyMsg.
	Notify MsgType = 2
	// Probe checks that the peer's RPC server answers (Mooncake ≥
	// v0.3.10.post2).
	Probe MsgType = 3
	// Legacy is an untyped "old protocol" frame: the whole frame is JSON.
	// A server handles it like Connection and replies untyped.
	Legacy MsgType = 0xff
)

// DefaultMaxFrame is the default frame length limit, Mooncake's
// MC_HANDSHAKE_MAX_LENGTH default (1 MiB; fixed at that value before v0.3.9).
const DefaultMaxFrame = 1 << 20

// MaxFrameLimit is the largest MC_HANDSHAKE_MAX_LENGTH Mooncake accepts
// (128 MiB).
const MaxFrameLimit = 128 << 20

// lengthSize is the size of the frame's length prefix.
const lengthSize = 8

// firstChunk is how much ReadFrame allocates before any payload byte has
// arrived; the buffer then grows with the data actually received, so that a
// peer declaring a large frame and sending nothing costs little memory.
const firstChunk = 64 << 10

func (t MsgType) String() string {
	switch t {
	case Connection:
		return "connection"
	case Metadata:
		return "metadata"
	case Notify:
		return "notify"
	case Probe:
		return "probe"
	case Legacy:
		return "legacy"
	}
	return fmt.Sprintf("type(%#02x)", uint8(t))
}

// typed reports whether t is written as a type byte.
func (t MsgType) typed() bool { return t <= Probe }

// valid reports whether t is a type this package reads and writes.
func (t MsgType) valid() bool { return t.typed() || t == Legacy }

// WriteFrame writes one frame in a single Write: the length (type byte plus
// payload, u64 little-endian, as Mooncake writes its host-order length on
// x86_64 and aarch64), the type byte (omitted for Legacy), then payload.
//
// A Legacy payload must start with a byte a reader takes for JSON (0x04..0x7f,
// see ReadFrame) or the frame would be misread; such payloads, an empty
// Legacy payload and any type other than the five constants are refused.
func WriteFrame(w io.Writer, t MsgType, payload []byte) error {
	frame, err := appendFrame(nil, t, payload)
	if err != nil {
		return err
	}
	if _, err := w.Write(frame); err != nil {
		return fmt.Errorf("write %s frame: %w", t, err)
	}
	return nil
}

// appendFrame appends the encoded frame to dst.
func appendFrame(dst []byte, t MsgType, payload []byte) ([]byte, error) {
	switch {
	case t.typed():
		dst = binary.LittleEndian.AppendUint64(dst, uint64(len(payload))+1)
		dst = append(dst, byte(t))
	case t == Legacy:
		if len(payload) == 0 {
			return nil, fmt.Errorf("write legacy frame: %w", ErrEmptyFrame)
		}
		if !legacyLead(payload[0]) {
			return nil, fmt.Errorf("write legacy frame: first byte %#02x would read as a type byte: %w", payload[0], ErrMalformed)
		}
		dst = binary.LittleEndian.AppendUint64(dst, uint64(len(payload)))
	default:
		return nil, fmt.Errorf("write frame: %w: %s", ErrUnknownType, t)
	}
	return append(dst, payload...), nil
}

// legacyLead reports whether b, as a frame's first byte, marks an untyped
// frame: above the highest type and below 0x80 (see ReadFrame).
func legacyLead(b byte) bool { return b > byte(Probe) && b < 0x80 }

// ReadFrame reads one frame and returns its type and payload. maxLen bounds
// the declared length (type byte plus payload); 0 means DefaultMaxFrame.
//
// A declared length of 0 is ErrEmptyFrame and one above maxLen is
// ErrFrameTooLarge; both are rejected before anything is allocated, and the
// payload buffer then grows with the bytes actually received, never beyond the
// declared length. A stream that ends before the first byte returns an error
// matching io.EOF; one that ends inside the frame, ErrTruncated.
//
// The first byte decides the type, as in Mooncake's readString, which tests
// `buffer[0] <= (char)Probe`:
//
//   - 0x00..0x03 is the type byte; the payload is the rest.
//   - 0x04..0x7f: the whole frame is the JSON payload of an untyped
//     ("old protocol") frame, returned as Legacy.
//   - 0x80..0xff is refused with ErrUnknownType. char is signed on x86_64,
//     so Mooncake there reads such a byte as a negative type byte of no known
//     type: its server closes without replying and its client reports a type
//     mismatch. We do the same on every architecture (on aarch64, where char
//     is unsigned, Mooncake would instead try the whole frame as JSON; no
//     JSON that jsoncpp's FastWriter writes starts with such a byte). In
//     particular a leading 0xff is not Legacy: Legacy is never on the wire.
func ReadFrame(r io.Reader, maxLen uint64) (MsgType, []byte, error) {
	if maxLen == 0 {
		maxLen = DefaultMaxFrame
	}
	var hdr [lengthSize]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		if n > 0 {
			return 0, nil, fmt.Errorf("read frame length (%d of %d bytes): %w: %w", n, lengthSize, ErrTruncated, err)
		}
		return 0, nil, fmt.Errorf("read frame length: %w", err)
	}
	length := binary.LittleEndian.Uint64(hdr[:])
	if length == 0 {
		return 0, nil, fmt.Errorf("read frame: %w", ErrEmptyFrame)
	}
	if length > maxLen {
		return 0, nil, fmt.Errorf("read frame: length %d over limit %d: %w", length, maxLen, ErrFrameTooLarge)
	}
	buf, err := readGrowing(r, int(length))
	if err != nil {
		return 0, nil, fmt.Errorf("read frame body (%d of %d bytes): %w: %w", len(buf), length, ErrTruncated, err)
	}
	switch lead := buf[0]; {
	case lead <= byte(Probe):
		return MsgType(lead), buf[1:], nil
	case lead < 0x80:
		return Legacy, buf, nil
	default:
		return 0, nil, fmt.Errorf("read frame: %w: first byte %#02x", ErrUnknownType, lead)
	}
}

// readGrowing reads exactly n bytes from r. Its buffer starts at most
// firstChunk long and doubles as data arrives, capped at n. On error it
// returns what it read and an error matching io.ErrUnexpectedEOF when the
// stream ended early.
func readGrowing(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, firstChunk))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, 2*cap(buf)))
			copy(grown, buf)
			buf = grown
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil {
			if len(buf) == n {
				break
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return buf, err
		}
	}
	return buf, nil
}
