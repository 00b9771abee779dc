package tcp

import (
	"testing"

	"github.com/stretchr/testify/require"
)

var headerCases = []struct {
	name string
	h    Header
	wire []byte
}{
	{
		name: "v1 read",
		h:    Header{Size: 4096, Addr: 0x00007f0012345000, Opcode: 0},
		wire: []byte{
			0x00, 0x10, 0, 0, 0, 0, 0, 0,
			0x00, 0x50, 0x34, 0x12, 0x00, 0x7f, 0, 0,
			0x00, 0, 0, 0, 0, 0, 0, 0,
		},
	},
	{
		name: "v2 write",
		h:    Header{Size: 0x0102030405060708, Addr: 0x1122334455667788, Opcode: 0x81},
		wire: []byte{
			0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
			0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
			0x81, 0, 0, 0, 0, 0, 0, 0,
		},
	},
	{
		name: "v2 read of 1 byte at max address",
		h:    Header{Size: 1, Addr: ^uint64(0), Opcode: 0x80},
		wire: []byte{
			1, 0, 0, 0, 0, 0, 0, 0,
			0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
			0x80, 0, 0, 0, 0, 0, 0, 0,
		},
	},
}

func TestHeaderGolden(t *testing.T) {
	for _, tc := range headerCases {
		t.Run(tc.name, func(t *testing.T) {
			var b [HeaderSize]byte
			for i := range b {
				b[i] = 0xEE // Encode must zero the padding
			}
			tc.h.Encode(&b)
			require.Equal(t, tc.wire, b[:])
			require.Equal(t, tc.h, DecodeHeader(&b))
		})
	}
}

func TestHeaderIgnoresPadding(t *testing.T) {
	var b [HeaderSize]byte
	copy(b[:], headerCases[1].wire)
	copy(b[17:], []byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03})
	require.Equal(t, headerCases[1].h, DecodeHeader(&b))
}

func TestHeaderOpcode(t *testing.T) {
	for _, tc := range []struct {
		name      string
		op        uint8
		write, v2 bool
	}{
		{"v1 read", 0, false, false},
		{"v1 write", 1, true, false},
		{"v2 read", 0x80, false, true},
		{"v2 write", 0x81, true, true},
		{"unknown is read", 7, false, false},
		{"unknown v2 is read", 0x87, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := Header{Opcode: tc.op}
			require.Equal(t, tc.write, h.isWrite())
			require.Equal(t, tc.v2, h.isV2())
		})
	}
}

var statusCases = []struct {
	name string
	wire [8]byte
	want StatusFrame
	err  error
}{
	{"ok", [8]byte{0x00, 0x00, 0x00, 0x00, 0x56, 0x54, 0x43, 0x4D}, StatusOK, nil},
	{"rejected", [8]byte{0x01, 0x00, 0x00, 0x00, 0x56, 0x54, 0x43, 0x4D}, StatusRejected, nil},
	{"unknown code keeps magic", [8]byte{0x07, 0x00, 0x00, 0x00, 0x56, 0x54, 0x43, 0x4D}, 0x4D43545600000007, nil},
	{"zeros are legacy", [8]byte{}, 0, ErrLegacyPeer},
	{"big-endian magic is legacy", [8]byte{0x4D, 0x43, 0x54, 0x56, 0, 0, 0, 0}, 0, ErrLegacyPeer},
	{"v1 data is legacy", [8]byte{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o'}, 0, ErrLegacyPeer},
}

func TestStatusGolden(t *testing.T) {
	for _, tc := range statusCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeStatus(tc.wire)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				require.Zero(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.wire, EncodeStatus(got))
		})
	}
}

func FuzzDecodeHeader(f *testing.F) {
	for _, tc := range headerCases {
		f.Add(tc.wire)
	}
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		var b [HeaderSize]byte
		copy(b[:], in)
		h := DecodeHeader(&b)
		var out [HeaderSize]byte
		h.Encode(&out)
		require.Equal(t, b[:17], out[:17], "encode(decode(b)) keeps size, addr and opcode")
		require.Equal(t, make([]byte, 7), out[17:], "padding is sent as zeros")
		require.Equal(t, h, DecodeHeader(&out))
	})
}

func FuzzDecodeStatus(f *testing.F) {
	for _, tc := range statusCases {
		f.Add(tc.wire[:])
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var b [8]byte
		copy(b[:], in)
		s, err := DecodeStatus(b)
		if err != nil {
			require.ErrorIs(t, err, ErrLegacyPeer)
			require.Zero(t, s)
			return
		}
		require.Equal(t, uint64(statusMagic), uint64(s)>>32)
		require.Equal(t, b, EncodeStatus(s))
	})
}
