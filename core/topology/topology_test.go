package topology

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/metadata"
)

func entry(pref, avail []string) metadata.PriorityEntry {
	if pref == nil {
		pref = []string{}
	}
	if avail == nil {
		avail = []string{}
	}
	return metadata.PriorityEntry{Preferred: pref, Available: avail}
}

var twoSocketGPUs = fakeGPUs{gpus: []GPU{
	// NVML spells bus ids with an 8-digit domain and upper case; NUMA -1
	// makes Discover read sysfs.
	{Ordinal: 0, BusID: "00000000:3C:00.0", NUMANode: -1},
	{Ordinal: 1, BusID: "00000000:87:00.0", NUMANode: -1},
}}

func TestDiscoverTwoSocketHost(t *testing.T) {
	topo, err := Discover(buildSysfs(twoSocketHost), twoSocketGPUs, nil)
	require.NoError(t, err)

	require.Equal(t, []string{"mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"}, topo.HCANames())
	require.Equal(t, []Skipped{
		{Name: "mlx5_4", Reason: "no ACTIVE port"},
		{Name: "mlx5_5", Reason: "device node /dev/infiniband/uverbs5 missing"},
	}, topo.Skipped)
	require.Equal(t, []int{0, 1}, topo.NUMANodes)
	require.True(t, topo.PeerMem)

	h0 := topo.HCAs[0]
	require.Equal(t, "0000:3b:00.0", h0.PCIBusID)
	require.Equal(t, "sys/devices/pci0000:00/0000:00:01.0/0000:3b:00.0", h0.PCIPath)
	require.Equal(t, 0, h0.NUMANode)
	require.Equal(t, "uverbs0", h0.UVerbs)
	require.Equal(t, []Port{{Num: 1, State: "ACTIVE", Active: true, LinkLayer: "Ethernet"}}, h0.Ports)
	require.Len(t, topo.HCAs[1].Ports, 2, "an HCA with one DOWN and one ACTIVE port is usable")
	require.Equal(t, -1, topo.HCAs[3].NUMANode)

	require.Equal(t, []GPU{
		{Ordinal: 0, BusID: "0000:3c:00.0", NUMANode: 0},
		{Ordinal: 1, BusID: "0000:87:00.0", NUMANode: -1},
	}, topo.GPUs)

	require.Equal(t, map[string]metadata.PriorityEntry{
		// NUMA -1 (mlx5_3) is preferred nowhere.
		"cpu:0": entry([]string{"mlx5_0", "mlx5_1"}, []string{"mlx5_2", "mlx5_3"}),
		"cpu:1": entry([]string{"mlx5_2"}, []string{"mlx5_0", "mlx5_1", "mlx5_3"}),
		// Same PCIe switch as mlx5_0; candidates narrowed to NUMA node 0.
		"cuda:0": entry([]string{"mlx5_0"}, []string{"mlx5_1", "mlx5_2", "mlx5_3"}),
		// NUMA -1: no narrowing; mlx5_2 shares the switch.
		"cuda:1": entry([]string{"mlx5_2"}, []string{"mlx5_0", "mlx5_1", "mlx5_3"}),
	}, topo.Matrix)

	js, err := topo.JSON()
	require.NoError(t, err)
	require.JSONEq(t, `{
		"cpu:0":[["mlx5_0","mlx5_1"],["mlx5_2","mlx5_3"]],
		"cpu:1":[["mlx5_2"],["mlx5_0","mlx5_1","mlx5_3"]],
		"cuda:0":[["mlx5_0"],["mlx5_1","mlx5_2","mlx5_3"]],
		"cuda:1":[["mlx5_2"],["mlx5_0","mlx5_1","mlx5_3"]]}`, string(js))
	require.Equal(t, byte('{'), js[0])
	require.NotContains(t, string(js), " ", "compact like Mooncake's descriptor")
}

func TestDiscoverVariants(t *testing.T) {
	noIB := twoSocketHost
	noIB.hcas = nil
	noIB.peermem = false
	tests := []struct {
		name      string
		host      sysfsHost
		gpus      GPUInfo
		filter    []string
		wantHCAs  []string
		wantKeys  []string
		wantErr   bool
		wantEmpty bool
	}{
		{name: "filter", host: twoSocketHost, filter: []string{"mlx5_2", "mlx5_9"}, wantHCAs: []string{"mlx5_2"}, wantKeys: []string{"cpu:0", "cpu:1"}},
		{name: "filter of a skipped device", host: twoSocketHost, filter: []string{"mlx5_4"}, wantKeys: []string{"cpu:0", "cpu:1"}, wantEmpty: true},
		{name: "no infiniband class", host: noIB, gpus: twoSocketGPUs, wantKeys: []string{"cpu:0", "cpu:1", "cuda:0", "cuda:1"}, wantEmpty: true},
		{name: "nvml absent", host: twoSocketHost, gpus: fakeGPUs{err: ErrUnavailable},
			wantHCAs: []string{"mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"}, wantKeys: []string{"cpu:0", "cpu:1"}},
		{name: "nvml broken", host: twoSocketHost, gpus: fakeGPUs{err: errors.New("nvml: unknown error")}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topo, err := Discover(buildSysfs(tc.host), tc.gpus, tc.filter)
			if tc.wantErr {
				require.Error(t, err)
				require.Nil(t, topo)
				return
			}
			require.NoError(t, err)
			if tc.wantEmpty {
				require.Empty(t, topo.HCAs)
			} else {
				require.Equal(t, tc.wantHCAs, topo.HCANames())
			}
			var keys []string
			for k, e := range topo.Matrix {
				keys = append(keys, k)
				require.NotNil(t, e.Preferred)
				require.NotNil(t, e.Available)
			}
			require.ElementsMatch(t, tc.wantKeys, keys)
		})
	}
}

func TestDiscoverEmptyMatrixJSON(t *testing.T) {
	topo, err := Discover(fstest.MapFS{"sys/devices/system/node/node0/cpulist": file("0-1")}, nil, nil)
	require.NoError(t, err)
	js, err := topo.JSON()
	require.NoError(t, err)
	require.Equal(t, `{"cpu:0":[[],[]]}`, string(js))
}

func TestDiscoverRealRoot(t *testing.T) {
	// This host's own sysfs: whatever it holds, discovery must not fail.
	topo, err := Discover(os.DirFS("/"), nil, nil)
	require.NoError(t, err)
	require.NotNil(t, topo.Matrix)
}

func TestJSONRoundTrip(t *testing.T) {
	topo, err := Discover(buildSysfs(twoSocketHost), twoSocketGPUs, nil)
	require.NoError(t, err)
	js, err := topo.JSON()
	require.NoError(t, err)
	back, err := Parse(js)
	require.NoError(t, err)
	require.Equal(t, topo.Matrix, back.Matrix)
	require.Equal(t, topo.HCANames(), back.HCANames(), "distinct names, deduplicated and sorted")
	require.Equal(t, []int{0, 1}, back.NUMANodes)
	js2, err := back.JSON()
	require.NoError(t, err)
	require.Equal(t, js, js2)
}

func TestParseMatrix(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]metadata.PriorityEntry
		wantErr bool
	}{
		{name: "mooncake example", in: `{"cpu:0":[["mlx5_0"],["mlx5_1"]]}`,
			want: map[string]metadata.PriorityEntry{"cpu:0": entry([]string{"mlx5_0"}, []string{"mlx5_1"})}},
		{name: "styled with newline", in: "{\n   \"cuda:0\" : [\n      [ \"mlx5_0\" ],\n      []\n   ]\n}\n",
			want: map[string]metadata.PriorityEntry{"cuda:0": entry([]string{"mlx5_0"}, nil)}},
		{name: "empty object", in: `{}`, want: map[string]metadata.PriorityEntry{}},
		{name: "empty", in: ``, wantErr: true},
		{name: "null", in: `null`, wantErr: true},
		{name: "array", in: `[]`, wantErr: true},
		{name: "one list", in: `{"cpu:0":[["mlx5_0"]]}`, wantErr: true},
		{name: "three lists", in: `{"cpu:0":[[],[],[]]}`, wantErr: true},
		{name: "number name", in: `{"cpu:0":[[1],[]]}`, wantErr: true},
		{name: "empty name", in: `{"cpu:0":[[""],[]]}`, wantErr: true},
		{name: "trailing data", in: `{"cpu:0":[[],[]]} x`, wantErr: true},
		{name: "not a list", in: `{"cpu:0":"mlx5_0"}`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseMatrix([]byte(tc.in))
			if tc.wantErr {
				require.ErrorIs(t, err, ErrMalformed)
				require.Nil(t, m)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, m)
		})
	}
}

func FuzzParseMatrix(f *testing.F) {
	for _, s := range []string{`{"cpu:0":[["mlx5_0"],["mlx5_1"]]}`, `{}`, `{"a":[[],[]]}`, `[`, `{"cpu:0":[[""],[]]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseMatrix(data)
		if err != nil {
			if m != nil {
				t.Fatal("non-nil matrix with error")
			}
			return
		}
		js, err := MatrixJSON(m)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseMatrix(js)
		if err != nil {
			t.Fatalf("re-parse %s: %v", js, err)
		}
		js2, _ := MatrixJSON(back)
		if string(js) != string(js2) {
			t.Fatalf("round trip %s != %s", js, js2)
		}
	})
}

func TestLoadCustom(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "topo.json")
	require.NoError(t, os.WriteFile(good, []byte(`{"cpu:0":[["mlx5_1","mlx5_0"],[]],"cuda:0":[["mlx5_1"],["mlx5_0"]]}`), 0o600))
	bad := filepath.Join(dir, "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"cpu:0":[["mlx5_1"]]}`), 0o600))

	topo, err := LoadCustom(good)
	require.NoError(t, err)
	require.Equal(t, []string{"mlx5_0", "mlx5_1"}, topo.HCANames())
	require.Equal(t, -1, topo.HCAs[0].NUMANode)

	_, err = LoadCustom(bad)
	require.ErrorIs(t, err, ErrMalformed)
	_, err = LoadCustom(filepath.Join(dir, "missing.json"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestSelect(t *testing.T) {
	// A peer's devices[] order need not be sorted: indices come from it.
	devices := []string{"mlx5_1", "mlx5_0", "mlx5_2", "mlx5_3"}
	matrix := map[string]metadata.PriorityEntry{
		"cpu:0": entry([]string{"mlx5_0", "mlx5_1", "mlx5_0"}, []string{"mlx5_2", "mlx5_3"}),
		"cpu:1": entry(nil, []string{"mlx5_2", "mlx5_9"}),
		"empty": entry(nil, nil),
	}
	r := Resolve(devices, matrix)
	tests := []struct {
		name     string
		loc      string
		retry    int
		pick     uint64
		hint     int
		want     int
		wantErr  error
		resolved *Resolved
	}{
		{name: "retry 0 picks among preferred", loc: "cpu:0", pick: 0, hint: -1, want: 1},
		{name: "retry 0 pick wraps", loc: "cpu:0", pick: 3, hint: -1, want: 0},
		{name: "retry 1 first preferred", loc: "cpu:0", retry: 1, hint: -1, want: 1},
		{name: "retry 2 second preferred", loc: "cpu:0", retry: 2, hint: -1, want: 0},
		{name: "retry 3 first available", loc: "cpu:0", retry: 3, hint: -1, want: 2},
		{name: "retry 4 second available", loc: "cpu:0", retry: 4, hint: -1, want: 3},
		{name: "retry 5 wraps", loc: "cpu:0", retry: 5, hint: -1, want: 1},
		{name: "only available", loc: "cpu:1", pick: 7, hint: -1, want: 2},
		{name: "unknown name dropped", loc: "cpu:1", retry: 2, hint: -1, want: 2},
		{name: "unknown location uses wildcard", loc: "cuda:5", pick: 2, hint: -1, want: 2},
		{name: "empty entry uses wildcard", loc: "empty", pick: 3, hint: -1, want: 3},
		{name: "wildcard", loc: Wildcard, retry: 2, hint: -1, want: 1},
		{name: "hint in lists", loc: "cpu:0", pick: 0, hint: 3, want: 3},
		{name: "hint not in lists", loc: "cpu:1", pick: 0, hint: 0, want: 2},
		{name: "hint ignored on retry", loc: "cpu:0", retry: 1, hint: 3, want: 1},
		{name: "no devices", loc: "cpu:0", hint: -1, want: -1, wantErr: ErrNoDevice, resolved: Resolve(nil, matrix)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := r
			if tc.resolved != nil {
				rr = tc.resolved
			}
			got, err := rr.Select(tc.loc, tc.retry, tc.pick, tc.hint)
			require.ErrorIs(t, err, tc.wantErr)
			require.Equal(t, tc.want, got)
		})
	}
	require.Equal(t, 4, r.Candidates("cpu:0"), "duplicates count once")
	require.Equal(t, 1, r.Candidates("cpu:1"))
}

func TestSelectRotationCoversEveryDevice(t *testing.T) {
	topo, err := Discover(buildSysfs(twoSocketHost), nil, nil)
	require.NoError(t, err)
	r := topo.Resolved()
	for _, loc := range []string{"cpu:0", "cpu:1", Wildcard} {
		seen := map[int]bool{}
		for retry := 1; retry <= r.Candidates(loc); retry++ {
			d, err := r.Select(loc, retry, 0, -1)
			require.NoError(t, err)
			seen[d] = true
		}
		require.Len(t, seen, 4, loc)
	}
}

func TestWithout(t *testing.T) {
	topo, err := Discover(buildSysfs(twoSocketHost), twoSocketGPUs, nil)
	require.NoError(t, err)
	w := topo.Without("mlx5_0")
	require.Equal(t, []string{"mlx5_1", "mlx5_2", "mlx5_3"}, w.HCANames())
	require.Equal(t, entry([]string{"mlx5_1"}, []string{"mlx5_2", "mlx5_3"}), w.Matrix["cpu:0"])
	require.Equal(t, entry(nil, []string{"mlx5_1", "mlx5_2", "mlx5_3"}), w.Matrix["cuda:0"])
	require.Len(t, topo.HCAs, 4, "the original is untouched")
}

func TestNormalizeBusID(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "00000000:00:06.0", want: "0000:00:06.0"},
		{in: "00000000:3B:00.0", want: "0000:3b:00.0"},
		{in: "0000:3b:00.0", want: "0000:3b:00.0"},
		{in: "3b:00.1", want: "0000:3b:00.1"},
		{in: "00010000:3b:1f.7", want: "10000:3b:1f.7"},
		{in: "0000:3b:00", wantErr: true},
		{in: "0000:3b:20.0", wantErr: true},
		{in: "0000:3b:00.8", wantErr: true},
		{in: "zz:00.0", wantErr: true},
		{in: "", wantErr: true},
		{in: "1:2:3:4", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := NormalizeBusID(tc.in)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestRealpath(t *testing.T) {
	m := fstest.MapFS{
		"a/b/c":     file("x"),
		"link":      symlink("a/b"),
		"abs":       symlink("/a/b/c"),
		"up":        symlink("../../a"),
		"loop1":     symlink("loop2"),
		"loop2":     symlink("loop1"),
		"a/b/self":  symlink("."),
		"a/b/other": symlink("../b/c"),
	}
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "link/c", want: "a/b/c"},
		{in: "abs", want: "a/b/c"},
		{in: "up/b", want: "a/b"},
		{in: "a/b/self/self/c", want: "a/b/c"},
		{in: "a/b/other", want: "a/b/c"},
		{in: "a/./b/../b/c", want: "a/b/c"},
		{in: "loop1", wantErr: true},
		{in: "missing/x", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := realpath(m, tc.in)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestPCIDistance(t *testing.T) {
	require.Equal(t, 0, pciDistance("sys/devices/pci0000:00/0000:00:01.0/0000:3b:00.0", "sys/devices/pci0000:00/0000:00:01.0/0000:3c:00.0"))
	require.Equal(t, 2, pciDistance("sys/devices/pci0000:00/0000:00:02.0/0000:5e:00.0", "sys/devices/pci0000:00/0000:00:01.0/0000:3c:00.0"))
	require.Equal(t, 4, pciDistance("sys/devices/pci0000:00/0000:00:01.0/0000:3b:00.0", "sys/devices/pci0000:80/0000:80:01.0/0000:87:00.0"))
	require.Equal(t, -1, pciDistance("", "x"))
}
