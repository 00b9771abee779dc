package slicing

import (
	"encoding/binary"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
)

// span is a test chunk: [start, end) with its index as the reference.
type span struct{ start, end uint64 }

// layout is sorted, non-overlapping spans.
type layout []span

func (l layout) find(addr uint64) (int, uint64, bool) {
	i := sort.Search(len(l), func(i int) bool { return l[i].start > addr }) - 1
	if i < 0 || addr >= l[i].end {
		return -1, 0, false
	}
	return i, l[i].end, true
}

// chunks lays out spans of the given sizes end to end from base.
func chunks(base uint64, sizes ...uint64) layout {
	var l layout
	for _, s := range sizes {
		l = append(l, span{base, base + s})
		base += s
	}
	return l
}

// even is n spans of size from base.
func even(base, size uint64, n int) layout {
	sizes := make([]uint64, n)
	for i := range sizes {
		sizes[i] = size
	}
	return chunks(base, sizes...)
}

type want struct {
	off, length uint64
	local, rem  int
}

func pieces(p []Piece[int, int]) []want {
	var out []want
	for _, x := range p {
		out = append(out, want{x.Offset, x.Length, x.Local, x.Remote})
	}
	return out
}

// TestCutMooncakeCases mirrors the cases Mooncake's barex transport codes
// by hand (transports.md §5.7): the slice is [src, src+L) locally and
// [dst, dst+L) remotely; a is the local cut (local chunk end - src), b the
// remote cut; j and k are the chunks holding the slice's start.
func TestCutMooncakeCases(t *testing.T) {
	const lb, rb = 1 << 20, 1 << 30 // local and remote bases
	local := even(lb, 100, 4)       // chunks of 100 bytes: j=0..3
	remote := even(rb, 100, 4)
	lim := Limits{Max: 1000}
	tests := []struct {
		name     string
		src, dst uint64 // offsets from the bases
		length   uint64
		remote   layout
		want     []want
	}{
		{name: "1:1", src: 10, dst: 20, length: 50, want: []want{{0, 50, 0, 0}}},
		{name: "1:1 whole chunks", src: 100, dst: 200, length: 100, want: []want{{0, 100, 1, 2}}},
		{name: "1:2 cut at b", src: 0, dst: 70, length: 60, want: []want{{0, 30, 0, 0}, {30, 30, 0, 1}}},
		{name: "2:1 cut at a", src: 70, dst: 0, length: 60, want: []want{{0, 30, 0, 0}, {30, 30, 1, 0}}},
		{name: "2:2 a==b", src: 150, dst: 250, length: 100, want: []want{{0, 50, 1, 2}, {50, 50, 2, 3}}},
		{name: "2:2 a>b", src: 140, dst: 260, length: 100,
			want: []want{{0, 40, 1, 2}, {40, 20, 1, 3}, {60, 40, 2, 3}}},
		{name: "2:2 a<b", src: 160, dst: 240, length: 100,
			want: []want{{0, 40, 1, 2}, {40, 20, 2, 2}, {60, 40, 2, 3}}},
		// A peer with a smaller MC_MIN_REG_SIZE: one local chunk spans three
		// remote ones (Mooncake rejects this, B15).
		{name: "1:3 smaller remote chunks", src: 0, dst: 30, length: 100, remote: even(rb, 40, 5),
			want: []want{{0, 10, 0, 0}, {10, 40, 0, 1}, {50, 40, 0, 2}, {90, 10, 0, 3}}},
		{name: "4:4 every boundary", src: 0, dst: 50, length: 350,
			want: []want{{0, 50, 0, 0}, {50, 50, 0, 1}, {100, 50, 1, 1}, {150, 50, 1, 2}, {200, 50, 2, 2},
				{250, 50, 2, 3}, {300, 50, 3, 3}}},
		{name: "zero length", src: 5, dst: 5, length: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := remote
			if tc.remote != nil {
				r = tc.remote
			}
			got, err := Cut(local.find, r.find, lb+tc.src, rb+tc.dst, tc.length, lim)
			require.NoError(t, err)
			require.Equal(t, tc.want, pieces(got))
		})
	}
}

func TestCutLimits(t *testing.T) {
	const base = 4096
	big := even(base, 1<<20, 1)
	tests := []struct {
		name   string
		length uint64
		lim    Limits
		want   []uint64
	}{
		{name: "one piece", length: 64, lim: Limits{Max: 64}, want: []uint64{64}},
		{name: "split at max, tail merged", length: 200, lim: Limits{Max: 64, Fragment: 8}, want: []uint64{64, 64, 72}},
		{name: "tail within the fragment merges", length: 80, lim: Limits{Max: 64, Fragment: 16}, want: []uint64{80}},
		{name: "tail above the fragment is its own piece", length: 81, lim: Limits{Max: 64, Fragment: 16}, want: []uint64{64, 17}},
		{name: "no fragment", length: 65, lim: Limits{Max: 64}, want: []uint64{64, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Cut(big.find, big.find, base, base, tc.length, tc.lim)
			require.NoError(t, err)
			var lens []uint64
			for _, p := range got {
				lens = append(lens, p.Length)
			}
			require.Equal(t, tc.want, lens)
		})
	}
}

func TestCutErrors(t *testing.T) {
	const lb, rb = 1 << 20, 1 << 30
	local := layout{{lb, lb + 100}, {lb + 101, lb + 200}} // one-byte gap at 100
	remote := chunks(rb, 100, 100)
	tests := []struct {
		name     string
		src, dst uint64
		length   uint64
		lim      Limits
		want     *RangeError
		wantErr  error
	}{
		{name: "local gap between chunks", src: lb + 90, dst: rb, length: 20,
			want: &RangeError{Side: Local, Addr: lb + 100, Length: 10}},
		{name: "local before everything", src: lb - 1, dst: rb, length: 1,
			want: &RangeError{Side: Local, Addr: lb - 1, Length: 1}},
		{name: "remote past the last buffer", src: lb, dst: rb + 150, length: 60,
			want: &RangeError{Side: Remote, Addr: rb + 200, Length: 10}},
		{name: "local wraps", src: ^uint64(0) - 5, dst: rb, length: 10,
			want: &RangeError{Side: Local, Addr: ^uint64(0) - 5, Length: 10, Wraps: true}},
		{name: "remote wraps", src: lb, dst: ^uint64(0), length: 2,
			want: &RangeError{Side: Remote, Addr: ^uint64(0), Length: 2, Wraps: true}},
		{name: "zero max", src: lb, dst: rb, length: 1, lim: Limits{}, wantErr: ErrInvalidLimits},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lim := tc.lim
			if tc.wantErr == nil {
				lim = Limits{Max: 1 << 20}
			}
			got, err := Cut(local.find, remote.find, tc.src, tc.dst, tc.length, lim)
			require.Nil(t, got)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				return
			}
			require.ErrorIs(t, err, ErrNotRegistered)
			var re *RangeError
			require.ErrorAs(t, err, &re)
			require.Equal(t, tc.want, re)
		})
	}
}

// TestCutBadFinder: a finder whose end is not above the address cannot
// make Cut loop or emit an empty piece.
func TestCutBadFinder(t *testing.T) {
	stuck := func(addr uint64) (int, uint64, bool) { return 0, addr, true }
	fine := even(0, 1<<20, 1)
	got, err := Cut(stuck, fine.find, 10, 10, 5, Limits{Max: 4})
	require.ErrorIs(t, err, ErrNotRegistered)
	require.Nil(t, got)
	got, err = Cut(fine.find, stuck, 10, 10, 5, Limits{Max: 4})
	require.ErrorIs(t, err, ErrNotRegistered)
	require.Nil(t, got)
}

// randomLayout covers [base, base+total) with spans of random sizes, or of
// one size when fixed > 0.
func randomLayout(r *rand.Rand, base, total, maxSpan, fixed uint64) layout {
	var sizes []uint64
	for sum := uint64(0); sum < total; {
		s := fixed
		if s == 0 {
			s = 1 + r.Uint64N(maxSpan)
		}
		s = min(s, total-sum)
		sizes = append(sizes, s)
		sum += s
	}
	return chunks(base, sizes...)
}

// checkPieces asserts the slicer's properties for one request. It uses
// plain comparisons: it runs for every piece of thousands of requests.
func checkPieces(t *testing.T, local, remote layout, laddr, raddr, length uint64, lim Limits, got []Piece[int, int]) {
	t.Helper()
	pos := uint64(0)
	for i, p := range got {
		ls, rs := local[p.Local], remote[p.Remote]
		la, ra := laddr+p.Offset, raddr+p.Offset
		switch {
		case p.Offset != pos:
			t.Fatalf("piece %d at %d, want %d: pieces tile the request in order", i, p.Offset, pos)
		case p.Length == 0:
			t.Fatalf("piece %d is empty", i)
		case p.Length > lim.Max+lim.Fragment:
			t.Fatalf("piece %d has %d bytes, over the limit %+v", i, p.Length, lim)
		case la < ls.start || la+p.Length > ls.end:
			t.Fatalf("piece %d [%#x, +%d) is not inside its local span %+v", i, la, p.Length, ls)
		case ra < rs.start || ra+p.Length > rs.end:
			t.Fatalf("piece %d [%#x, +%d) is not inside its remote span %+v", i, ra, p.Length, rs)
		case i < len(got)-1 && la+p.Length != ls.end && ra+p.Length != rs.end && p.Length != lim.Max:
			// Minimal: a piece that is not the last ends at a boundary or at Max.
			t.Fatalf("piece %d [%d, +%d) was cut for no reason", i, p.Offset, p.Length)
		}
		pos += p.Length
	}
	require.Equal(t, length, pos, "the pieces add up to the request")
}

// TestCutProperties cuts random requests over random local and remote
// layouts (equal and unequal chunk sizes, remote chunks smaller than local
// ones and the reverse, so N-way spans occur on both sides).
func TestCutProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	const total = 1 << 20
	spans := 0
	for layoutNo := range 300 {
		var fixedL, fixedR uint64
		if layoutNo%4 == 0 {
			fixedL, fixedR = 4096, 4096 // equal block sizes, as Mooncake assumes
		}
		if layoutNo%4 == 1 {
			fixedL, fixedR = 65536, 4096 // the peer registered smaller chunks
		}
		local := randomLayout(r, 1<<32, total, 1+r.Uint64N(100_000), fixedL)
		remote := randomLayout(r, 1<<40, total, 1+r.Uint64N(100_000), fixedR)
		lim := Limits{Max: 512 + r.Uint64N(200_000)}
		if r.IntN(2) == 0 {
			lim.Fragment = r.Uint64N(lim.Max)
		}
		for range 20 {
			length := 1 + r.Uint64N(total)
			lo := r.Uint64N(total - length + 1)
			ro := r.Uint64N(total - length + 1)
			laddr, raddr := local[0].start+lo, remote[0].start+ro
			got, err := Cut(local.find, remote.find, laddr, raddr, length, lim)
			require.NoError(t, err)
			checkPieces(t, local, remote, laddr, raddr, length, lim, got)
			for _, p := range got {
				if p.Local != got[0].Local && p.Remote != got[0].Remote {
					spans++
				}
			}
		}
	}
	require.NotZero(t, spans, "the random layouts made multi-chunk spans on both sides")
}

// FuzzCut: remote layouts come from peers' descriptors. Whatever the
// layout and request, Cut never panics, returns nil with every error, and
// otherwise pieces that satisfy every property.
func FuzzCut(f *testing.F) {
	seed := func(sizesL, sizesR []uint16, lo, ro, length uint32, max, frag uint16) []byte {
		var b []byte
		b = binary.LittleEndian.AppendUint32(b, lo)
		b = binary.LittleEndian.AppendUint32(b, ro)
		b = binary.LittleEndian.AppendUint32(b, length)
		b = binary.LittleEndian.AppendUint16(b, max)
		b = binary.LittleEndian.AppendUint16(b, frag)
		b = append(b, byte(len(sizesL)))
		for _, s := range sizesL {
			b = binary.LittleEndian.AppendUint16(b, s)
		}
		for _, s := range sizesR {
			b = binary.LittleEndian.AppendUint16(b, s)
		}
		return b
	}
	f.Add(seed([]uint16{100, 100}, []uint16{100, 100}, 150, 140, 100, 1000, 0))
	f.Add(seed([]uint16{100}, []uint16{40, 40, 40}, 0, 30, 100, 64, 16))
	f.Add(seed([]uint16{0, 5}, []uint16{7}, 0, 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 17 {
			return
		}
		lo := uint64(binary.LittleEndian.Uint32(data))
		ro := uint64(binary.LittleEndian.Uint32(data[4:]))
		length := uint64(binary.LittleEndian.Uint32(data[8:])) % (1 << 20)
		lim := Limits{Max: uint64(binary.LittleEndian.Uint16(data[12:])), Fragment: uint64(binary.LittleEndian.Uint16(data[14:]))}
		nl := int(data[16])
		rest := data[17:]
		var sizesL, sizesR []uint64
		for i := 0; len(rest) >= 2; i++ {
			s := uint64(binary.LittleEndian.Uint16(rest))
			rest = rest[2:]
			if s == 0 {
				continue // a gap-free layout needs non-empty spans
			}
			if i < nl {
				sizesL = append(sizesL, s)
			} else {
				sizesR = append(sizesR, s)
			}
		}
		local, remote := chunks(1<<20, sizesL...), chunks(1<<30, sizesR...)
		laddr, raddr := (1<<20)+lo%(1<<17), (1<<30)+ro%(1<<17)
		got, err := Cut(local.find, remote.find, laddr, raddr, length, lim)
		if err != nil {
			require.Nil(t, got)
			return
		}
		checkPieces(t, local, remote, laddr, raddr, length, lim, got)
	})
}
