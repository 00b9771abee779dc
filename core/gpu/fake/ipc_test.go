//go:build unix

package fake

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// twoProcesses returns two fake drivers standing for two processes of one
// host, checked for leaks when the test ends.
func twoProcesses(t *testing.T) (exporter, importer *Driver) {
	t.Helper()
	exporter, importer = New(2), New(2)
	t.Cleanup(func() {
		require.NoError(t, importer.Close(), "importer leaked")
		require.NoError(t, exporter.Close(), "exporter leaked")
	})
	return exporter, importer
}

func waitStream(t *testing.T, d *Driver, s uintptr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, d.Synchronize(ctx, s))
}

func TestIPCExportAndOpen(t *testing.T) {
	testutil.ResourceCheck(t)
	exp, imp := twoProcesses(t)
	legacy, err := exp.Alloc(1, 8192)
	require.NoError(t, err)
	vmm, err := exp.AllocVMM(0, 4096, true)
	require.NoError(t, err)
	private, err := exp.AllocVMM(0, 4096, false)
	require.NoError(t, err)
	host := make([]byte, 64)

	want := bytes.Repeat([]byte{7}, 8192)
	require.NoError(t, exp.Write(legacy, want))
	require.NoError(t, exp.Write(vmm, want[:4096]))

	tests := []struct {
		name string
		addr uintptr
		kind gpu.IPCKind
		base uintptr
		size uint64
		dev  int
		err  error
	}{
		{name: "legacy, interior address", addr: legacy + 100, kind: gpu.IPCLegacy, base: legacy, size: 8192, dev: 1},
		{name: "vmm with a posix fd", addr: vmm, kind: gpu.IPCVMM, base: vmm, size: 4096, dev: 0},
		{name: "vmm without a shareable handle", addr: private, err: gpu.ErrNotSupported},
		{name: "host memory", addr: addrOf(host), err: gpu.ErrInvalidRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := exp.ExportIPC(tc.addr)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				require.Equal(t, -1, h.FD)
				return
			}
			require.NoError(t, err)
			defer func() { require.NoError(t, h.Close()) }()
			require.Equal(t, tc.kind, h.Kind)
			require.Equal(t, tc.base, h.Base)
			require.Equal(t, tc.size, h.Size)
			uuid, err := exp.DeviceUUID(tc.dev)
			require.NoError(t, err)
			require.Equal(t, uuid, h.Device)

			m, err := imp.OpenIPC(h, tc.dev)
			require.NoError(t, err)
			got := make([]byte, h.Size)
			require.NoError(t, imp.Read(m.Addr(), got))
			require.Equal(t, want[:h.Size], got, "the importer sees the exporter's bytes")
			require.NoError(t, imp.Write(m.Addr()+1, []byte{9}))
			one := make([]byte, 1)
			require.NoError(t, exp.Read(h.Base+1, one))
			require.Equal(t, byte(9), one[0], "and the exporter sees the importer's")
			require.NoError(t, imp.Write(m.Addr()+1, []byte{7}))
			require.NoError(t, m.Close())
		})
	}
	mappings, events, _ := imp.LiveIPC()
	require.Zero(t, mappings)
	require.Zero(t, events)
}

func TestIPCOpenRefusals(t *testing.T) {
	testutil.ResourceCheck(t)
	exp, imp := twoProcesses(t)
	a, err := exp.Alloc(0, 4096)
	require.NoError(t, err)
	h, err := exp.ExportIPC(a)
	require.NoError(t, err)

	_, err = exp.OpenIPC(h, 0)
	require.ErrorIs(t, err, ErrInvalidValue, "a process cannot open its own legacy handle")
	_, err = imp.OpenIPC(h, 1)
	require.ErrorIs(t, err, ErrInvalidValue, "device 1 is another GPU")

	// The importer numbers the GPUs the other way round: the same GPU is
	// its device 1.
	u0, _ := exp.DeviceUUID(0)
	u1, _ := exp.DeviceUUID(1)
	imp.SetUUIDs([]gpu.UUID{u1, u0})
	m, err := imp.OpenIPC(h, 1)
	require.NoError(t, err)
	ord, err := imp.Locate(m.Addr(), 4096)
	require.NoError(t, err)
	require.Equal(t, 1, ord)

	// A second open in the same driver is the same mapping, counted.
	m2, err := imp.OpenIPC(h, 1)
	require.NoError(t, err)
	require.Equal(t, m.Addr(), m2.Addr())
	require.NoError(t, m.Close())
	require.NoError(t, imp.Write(m2.Addr(), []byte{1}), "still mapped: one reference is left")
	require.NoError(t, m2.Close())
	require.NoError(t, m2.Close(), "idempotent")
	require.ErrorIs(t, imp.Free(m.Addr()), ErrInvalidValue, "unmapped")
	_, _, imports := imp.LiveIPC()
	require.Equal(t, 1, imports)

	require.NoError(t, exp.Free(a))
	_, err = imp.OpenIPC(h, 1)
	require.ErrorIs(t, err, ErrInvalidValue, "the allocation was freed")
}

func TestCopiesReachMappingsOnly(t *testing.T) {
	testutil.ResourceCheck(t)
	exp, imp := twoProcesses(t)
	remote, err := exp.AllocVMM(0, 4096, true)
	require.NoError(t, err)
	h, err := exp.ExportIPC(remote)
	require.NoError(t, err)
	m, err := imp.OpenIPC(h, 0)
	require.NoError(t, err)
	require.NoError(t, h.Close(), "the mapping does not need the fd")
	defer func() { require.NoError(t, m.Close()) }()
	local, err := imp.Alloc(1, 4096)
	require.NoError(t, err)
	host := bytes.Repeat([]byte{5}, 4096)

	s, err := imp.NewStream(0)
	require.NoError(t, err)
	require.ErrorIs(t, imp.CopyAsync(s, 0, remote, addrOf(host), 4096), ErrInvalidValue,
		"the exporter's address is not mapped in the importer")
	require.ErrorIs(t, imp.CopyAsync(s, 0, m.Addr()+4000, addrOf(host), 200), ErrInvalidValue, "past the mapping")

	// host → remote (mapped) → local device memory of another device → host.
	back := make([]byte, 4096)
	require.NoError(t, imp.CopyAsync(s, 0, m.Addr(), addrOf(host), 4096))
	require.NoError(t, imp.CopyAsync(s, 0, local, m.Addr(), 4096))
	require.NoError(t, imp.CopyAsync(s, 0, addrOf(back), local, 4096))
	ev, err := imp.RecordEvent(s, 0)
	require.NoError(t, err)
	waitStream(t, imp, s)
	done, err := ev.Done()
	require.NoError(t, err)
	require.True(t, done)
	require.NoError(t, ev.Close())
	require.Equal(t, host, back)
	got := make([]byte, 4096)
	require.NoError(t, exp.Read(remote, got))
	require.Equal(t, host, got)

	// A copier copies between any of them too, when waited for.
	cp, err := imp.NewCopier(0, 1)
	require.NoError(t, err)
	zero := make([]byte, 4096)
	require.NoError(t, cp.Copy(0, m.Addr(), addrOf(zero), 4096))
	require.NoError(t, exp.Read(remote, got))
	require.Equal(t, host, got, "not run before Wait")
	require.NoError(t, cp.Wait(0))
	require.NoError(t, exp.Read(remote, got))
	require.Equal(t, zero, got)
	require.NoError(t, cp.Close())
}

func TestEventWaitsForTheStream(t *testing.T) {
	d := New(1)
	defer func() { require.NoError(t, d.Close()) }()
	s, err := d.NewStream(0)
	require.NoError(t, err)
	release := make(chan struct{})
	require.NoError(t, d.Launch(s, func() { <-release }))
	ev, err := d.RecordEvent(s, 0)
	require.NoError(t, err)
	done, err := ev.Done()
	require.NoError(t, err)
	require.False(t, done, "the kernel before it has not run")
	close(release)
	waitStream(t, d, s)
	done, err = ev.Done()
	require.NoError(t, err)
	require.True(t, done)
	require.NoError(t, ev.Close())
	_, err = ev.Done()
	require.ErrorIs(t, err, ErrClosed)
}

func TestIPCLeaksAreReported(t *testing.T) {
	exp, imp := New(1), New(1)
	a, err := exp.Alloc(0, 4096)
	require.NoError(t, err)
	h, err := exp.ExportIPC(a)
	require.NoError(t, err)
	m, err := imp.OpenIPC(h, 0)
	require.NoError(t, err)
	_, err = imp.RecordEvent(0, 0)
	require.NoError(t, err)
	require.ErrorIs(t, imp.Close(), ErrLeak)
	require.NoError(t, m.Close(), "a mapping closed after its driver does nothing")
	require.NoError(t, exp.Close())
}

// 100 export/open/close cycles of each kind leave no descriptor, mapping
// or goroutine behind.
func TestIPCCycles(t *testing.T) {
	testutil.ResourceCheck(t)
	exp, imp := twoProcesses(t)
	for i := range 100 {
		var a uintptr
		var err error
		if i%2 == 0 {
			a, err = exp.Alloc(0, 4096)
		} else {
			a, err = exp.AllocVMM(0, 4096, true)
		}
		require.NoError(t, err)
		h, err := exp.ExportIPC(a)
		require.NoError(t, err)
		m, err := imp.OpenIPC(h, 0)
		require.NoError(t, err)
		require.NoError(t, h.Close())
		require.NoError(t, imp.Write(m.Addr(), []byte{byte(i)}))
		require.NoError(t, m.Close())
		require.NoError(t, exp.Free(a))
	}
	mappings, _, imports := imp.LiveIPC()
	require.Zero(t, mappings)
	require.Equal(t, 100, imports)
}
