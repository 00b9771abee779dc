package handshake

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Bodies as Mooncake writes them (reference/protocol.md §4.4; the PR form is
// the verified reply of a TCP-only v0.3.8 engine).
const (
	emptyDescPR   = `{"local_nic_path":"","peer_nic_path":"","qp_num":[],"reply_msg":""}` + "\n"
	emptyDescHEAD = `{"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""}` + "\n"
	notifyJob1    = `{"name":"job1","notify_msg":"hello"}` + "\n"
)

// goldenFrames are whole frames, written out byte by byte: u64 little-endian
// length, type byte (none for legacy), body.
var goldenFrames = []struct {
	name    string
	wire    string
	t       MsgType
	payload string
}{
	{"probe request", "\x04\x00\x00\x00\x00\x00\x00\x00\x03{}\n", Probe, "{}\n"},
	{"probe reply", "\x16\x00\x00\x00\x00\x00\x00\x00\x03" + `{"status":"success"}` + "\n", Probe, `{"status":"success"}` + "\n"},
	{"notify request", "\x26\x00\x00\x00\x00\x00\x00\x00\x02" + notifyJob1, Notify, notifyJob1},
	{"notify ack", "\x24\x00\x00\x00\x00\x00\x00\x00\x02" + `{"name":"","notify_msg":"success"}` + "\n", Notify, `{"name":"","notify_msg":"success"}` + "\n"},
	{"connection PR empty desc", "\x45\x00\x00\x00\x00\x00\x00\x00\x00" + emptyDescPR, Connection, emptyDescPR},
	{"connection HEAD empty desc", "\x6f\x00\x00\x00\x00\x00\x00\x00\x00" + emptyDescHEAD, Connection, emptyDescHEAD},
	{"metadata null reply", "\x06\x00\x00\x00\x00\x00\x00\x00\x01null\n", Metadata, "null\n"},
	{"legacy connection", "\x44\x00\x00\x00\x00\x00\x00\x00" + emptyDescPR, Legacy, emptyDescPR},
	{"legacy null", "\x05\x00\x00\x00\x00\x00\x00\x00null\n", Legacy, "null\n"},
	{"typed empty body", "\x01\x00\x00\x00\x00\x00\x00\x00\x02", Notify, ""},
}

// countingWriter counts Write calls.
type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

func TestWriteFrameGolden(t *testing.T) {
	for _, tc := range goldenFrames {
		t.Run(tc.name, func(t *testing.T) {
			var w countingWriter
			require.NoError(t, WriteFrame(&w, tc.t, []byte(tc.payload)))
			require.Equal(t, []byte(tc.wire), w.Bytes())
			require.Equal(t, 1, w.writes, "a frame must go out in one write")
		})
	}
}

func TestReadFrameGolden(t *testing.T) {
	for _, tc := range goldenFrames {
		t.Run(tc.name, func(t *testing.T) {
			r := strings.NewReader(tc.wire + "trailing bytes of the next frame")
			typ, payload, err := ReadFrame(r, DefaultMaxFrame)
			require.NoError(t, err)
			require.Equal(t, tc.t, typ)
			require.Equal(t, tc.payload, string(payload))
			require.Equal(t, len("trailing bytes of the next frame"), r.Len(), "read past the frame")
		})
	}
}

func frameHeader(length uint64) string {
	return string(binary.LittleEndian.AppendUint64(nil, length))
}

func TestReadFrameErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		wire   string
		maxLen uint64
		want   []error
	}{
		{"nothing", "", 0, []error{io.EOF}},
		{"zero length", frameHeader(0) + "\x01{}", 0, []error{ErrEmptyFrame}},
		{"over default limit", frameHeader(DefaultMaxFrame+1) + "\x01", 0, []error{ErrFrameTooLarge}},
		{"over given limit", frameHeader(11) + "\x01{}", 10, []error{ErrFrameTooLarge}},
		{"huge length", frameHeader(1<<63) + "\x01", MaxFrameLimit, []error{ErrFrameTooLarge}},
		{"http probe", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", MaxFrameLimit, []error{ErrFrameTooLarge}},
		{"truncated length", "\x04\x00\x00", 0, []error{ErrTruncated, io.ErrUnexpectedEOF}},
		{"truncated type", frameHeader(4), 0, []error{ErrTruncated, io.ErrUnexpectedEOF}},
		{"truncated body", frameHeader(4) + "\x03{}", 0, []error{ErrTruncated, io.ErrUnexpectedEOF}},
		{"negative char type 0x80", frameHeader(3) + "\x80{}", 0, []error{ErrUnknownType}},
		{"negative char type 0xff", frameHeader(3) + "\xff{}", 0, []error{ErrUnknownType}},
		{"utf-8 bom", frameHeader(5) + "\xef\xbb\xbf{}", 0, []error{ErrUnknownType}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ, payload, err := ReadFrame(strings.NewReader(tc.wire), tc.maxLen)
			for _, want := range tc.want {
				require.ErrorIs(t, err, want)
			}
			require.Zero(t, typ)
			require.Nil(t, payload)
		})
	}
}

func TestReadFrameLimitIsInclusive(t *testing.T) {
	typ, payload, err := ReadFrame(strings.NewReader(frameHeader(3)+"\x01{}"), 3)
	require.NoError(t, err)
	require.Equal(t, Metadata, typ)
	require.Equal(t, "{}", string(payload))
}

func TestReadFrameTypeBoundary(t *testing.T) {
	for b := 0; b < 256; b++ {
		typ, payload, err := ReadFrame(strings.NewReader(frameHeader(2)+string([]byte{byte(b), '0'})), 0)
		switch {
		case b <= 3:
			require.NoError(t, err)
			require.Equal(t, MsgType(b), typ)
			require.Equal(t, "0", string(payload))
		case b < 0x80:
			require.NoError(t, err)
			require.Equal(t, Legacy, typ)
			require.Equal(t, []byte{byte(b), '0'}, payload)
		default:
			require.ErrorIs(t, err, ErrUnknownType, "byte %#x", b)
		}
	}
}

// A peer that declares a large frame and sends a few bytes must not make us
// allocate the declared size.
func TestReadFrameAllocatesWhatArrives(t *testing.T) {
	wire := frameHeader(MaxFrameLimit) + "\x01" + strings.Repeat("x", 1000)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := ReadFrame(strings.NewReader(wire), MaxFrameLimit)
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, ErrTruncated)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20))
}

func TestReadFrameLarge(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), (3<<20)/16) // 3 MiB, crosses every growth step
	var w bytes.Buffer
	require.NoError(t, WriteFrame(&w, Metadata, body))
	_, _, err := ReadFrame(bytes.NewReader(w.Bytes()), 0)
	require.ErrorIs(t, err, ErrFrameTooLarge)

	typ, payload, err := ReadFrame(smallReader(bytes.NewReader(w.Bytes())), MaxFrameLimit)
	require.NoError(t, err)
	require.Equal(t, Metadata, typ)
	require.Equal(t, body, payload)
	require.Equal(t, len(body), cap(payload), "the buffer must end at the declared length")
}

// smallReader returns a reader that returns at most 4 KiB per Read, like a
// socket does, to exercise the growing buffer.
func smallReader(r io.Reader) io.Reader { return &smallReads{r} }

type smallReads struct{ r io.Reader }

func (s *smallReads) Read(p []byte) (int, error) {
	if len(p) > 4096 {
		p = p[:4096]
	}
	return s.r.Read(p)
}

func TestWriteFrameRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		t       MsgType
		payload string
		want    error
	}{
		{"unknown type 4", MsgType(4), "{}", ErrUnknownType},
		{"unknown type 0x80", MsgType(0x80), "{}", ErrUnknownType},
		{"invalid type 0xfe", MsgType(0xfe), "{}", ErrUnknownType},
		{"empty legacy", Legacy, "", ErrEmptyFrame},
		{"legacy reads as type", Legacy, "\x01{}", ErrMalformed},
		{"legacy reads as negative type", Legacy, "\xef\xbb\xbf{}", ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w countingWriter
			require.ErrorIs(t, WriteFrame(&w, tc.t, []byte(tc.payload)), tc.want)
			require.Zero(t, w.writes)
		})
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestWriteFrameWriteError(t *testing.T) {
	err := WriteFrame(failingWriter{}, Probe, ProbeRequest())
	require.ErrorContains(t, err, "broken pipe")
}

func TestMsgTypeString(t *testing.T) {
	for _, tc := range []struct {
		t    MsgType
		want string
	}{
		{Connection, "connection"}, {Metadata, "metadata"}, {Notify, "notify"},
		{Probe, "probe"}, {Legacy, "legacy"}, {MsgType(0x80), "type(0x80)"},
	} {
		require.Equal(t, tc.want, tc.t.String())
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, tc := range goldenFrames {
		f.Add([]byte(tc.wire))
	}
	f.Add([]byte(frameHeader(0)))
	f.Add([]byte(frameHeader(3) + "\xff{}"))
	f.Add([]byte(frameHeader(4) + "\x03{"))
	f.Add([]byte("\x04\x00"))
	captures, _ := filepath.Glob("../../testdata/mooncake/*/*/*.bin") // real Mooncake frames
	for _, p := range captures {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, wire []byte) {
		const limit = 1 << 16
		typ, payload, err := ReadFrame(bytes.NewReader(wire), limit)
		if err != nil {
			if typ != 0 || payload != nil {
				t.Fatalf("error %v with type %s and payload %q", err, typ, payload)
			}
			return
		}
		if !typ.valid() {
			t.Fatalf("invalid type %s without error", typ)
		}
		// Round trip: the frame re-encodes to the bytes it was read from.
		var w bytes.Buffer
		if err := WriteFrame(&w, typ, payload); err != nil {
			t.Fatalf("re-encode %s frame: %v", typ, err)
		}
		if !bytes.Equal(w.Bytes(), wire[:w.Len()]) {
			t.Fatalf("round trip: got %q, want prefix of %q", w.Bytes(), wire)
		}
	})
}
