package gpu_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
)

func newFake(t *testing.T, devices int) *fake.Driver {
	t.Helper()
	d := fake.New(devices)
	t.Cleanup(func() { require.NoError(t, d.Close(), "fake driver leaked resources") })
	return d
}

func TestStagingConfig(t *testing.T) {
	d := newFake(t, 1)
	tests := []struct {
		name string
		cfg  gpu.StagingConfig
		ok   bool
	}{
		{name: "defaults", ok: true},
		{name: "small", cfg: gpu.StagingConfig{Chunk: 4096, Slots: 2, Idle: 1}, ok: true},
		{name: "one slot", cfg: gpu.StagingConfig{Slots: 1}},
		{name: "tiny chunk", cfg: gpu.StagingConfig{Chunk: 100}},
		{name: "negative idle", cfg: gpu.StagingConfig{Idle: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := gpu.NewStaging(d, tc.cfg)
			if !tc.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.GreaterOrEqual(t, s.Config().Slots, 2)
			require.NoError(t, s.Close())
		})
	}
	_, err := gpu.NewStaging(nil, gpu.StagingConfig{})
	require.Error(t, err)
}

func TestStageCopiesThroughPinnedBuffers(t *testing.T) {
	d := newFake(t, 2)
	s, err := gpu.NewStaging(d, gpu.StagingConfig{Chunk: 4096, Slots: 2})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()

	dev, err := d.Alloc(1, 8192)
	require.NoError(t, err)
	want := bytes.Repeat([]byte("0123456789abcdef"), 512)
	require.NoError(t, d.Write(dev, want))

	st, err := s.Get(1)
	require.NoError(t, err)
	require.Equal(t, 1, st.Device())
	require.Equal(t, 2, st.Slots())
	require.NoError(t, st.ToHost(0, dev, 4096))
	require.NoError(t, st.ToHost(1, dev+4096, 4096))
	require.NotEqual(t, want[:4096], st.Buffer(0), "the fake runs copies only when waited for")
	require.NoError(t, st.Wait(1), "waiting on slot 1 runs slot 0's earlier copy too")
	require.Equal(t, want[:4096], st.Buffer(0))
	require.Equal(t, want[4096:], st.Buffer(1))
	require.NoError(t, st.Wait(0), "nothing left: returns at once")

	// Back to the device, reversed.
	copy(st.Buffer(0), want[4096:])
	copy(st.Buffer(1), want[:4096])
	require.NoError(t, st.ToDevice(0, dev, 4096))
	require.NoError(t, st.ToDevice(1, dev+4096, 4096))
	st.Release() // waits for both copies
	got := make([]byte, 8192)
	require.NoError(t, d.Read(dev, got))
	require.Equal(t, append(append([]byte{}, want[4096:]...), want[:4096]...), got)
	require.Equal(t, 0, s.Outstanding())
}

func TestStageArgumentErrors(t *testing.T) {
	d := newFake(t, 1)
	s, err := gpu.NewStaging(d, gpu.StagingConfig{Chunk: 4096})
	require.NoError(t, err)
	defer s.Close()
	dev, err := d.Alloc(0, 4096)
	require.NoError(t, err)
	st, err := s.Get(0)
	require.NoError(t, err)
	defer st.Release()
	tests := []struct {
		name string
		err  error
		want error
	}{
		{name: "slot too big", err: st.ToHost(3, dev, 10), want: gpu.ErrBadSlot},
		{name: "negative slot", err: st.ToDevice(-1, dev, 10), want: gpu.ErrBadSlot},
		{name: "wait bad slot", err: st.Wait(7), want: gpu.ErrBadSlot},
		{name: "zero bytes", err: st.ToHost(0, dev, 0)},
		{name: "more than a chunk", err: st.ToHost(0, dev, 4097)},
		{name: "host memory as device memory", err: st.ToHost(0, uintptr(0x1000), 16), want: fake.ErrInvalidValue},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Error(t, tc.err)
			if tc.want != nil {
				require.ErrorIs(t, tc.err, tc.want)
			}
		})
	}
	_, err = s.Get(-1)
	require.ErrorIs(t, err, gpu.ErrInvalidRange)
}

func TestStagingReusesAndBoundsIdleStages(t *testing.T) {
	d := newFake(t, 1)
	s, err := gpu.NewStaging(d, gpu.StagingConfig{Chunk: 4096, Idle: 2})
	require.NoError(t, err)
	var lent []*gpu.Stage
	for range 4 {
		st, err := s.Get(0)
		require.NoError(t, err)
		lent = append(lent, st)
	}
	require.Equal(t, 4, s.Outstanding())
	copiers, hosts, _ := d.Live()
	require.Equal(t, 4, copiers)
	require.Equal(t, 4, hosts)
	for _, st := range lent {
		st.Release()
		st.Release() // a second release is ignored
	}
	require.Equal(t, 0, s.Outstanding())
	copiers, hosts, _ = d.Live()
	require.Equal(t, 2, copiers, "only Idle stages are kept")
	require.Equal(t, 2, hosts)

	again, err := s.Get(0)
	require.NoError(t, err)
	require.Contains(t, lent, again, "an idle stage is reused")
	again.Release()

	require.NoError(t, s.Close())
	copiers, hosts, _ = d.Live()
	require.Zero(t, copiers)
	require.Zero(t, hosts)
	_, err = s.Get(0)
	require.ErrorIs(t, err, gpu.ErrClosed)
	require.NoError(t, s.Close(), "idempotent")
}

func TestBrokenStageIsNotReused(t *testing.T) {
	d := newFake(t, 1)
	s, err := gpu.NewStaging(d, gpu.StagingConfig{Chunk: 4096})
	require.NoError(t, err)
	defer s.Close()
	dev, err := d.Alloc(0, 4096)
	require.NoError(t, err)

	st, err := s.Get(0)
	require.NoError(t, err)
	d.FailCopiesAfter(0)
	require.NoError(t, st.ToHost(0, dev, 4096), "the failure shows when the copy runs")
	require.ErrorIs(t, st.Wait(0), fake.ErrInjected)
	d.FailCopiesAfter(-1)
	st.Release()
	copiers, _, _ := d.Live()
	require.Zero(t, copiers, "a stage whose copy failed is destroyed")

	st2, err := s.Get(0)
	require.NoError(t, err)
	require.NotSame(t, st, st2)
	require.NoError(t, st2.ToHost(0, dev, 4096))
	require.NoError(t, st2.Wait(0))
	st2.Release()
}

func TestReleaseWaitsForQueuedCopies(t *testing.T) {
	d := newFake(t, 1)
	s, err := gpu.NewStaging(d, gpu.StagingConfig{Chunk: 4096})
	require.NoError(t, err)
	defer s.Close()
	dev, err := d.Alloc(0, 4096)
	require.NoError(t, err)
	st, err := s.Get(0)
	require.NoError(t, err)
	copy(st.Buffer(2), bytes.Repeat([]byte{7}, 4096))
	require.NoError(t, st.ToDevice(2, dev, 4096))
	st.Release()
	got := make([]byte, 4096)
	require.NoError(t, d.Read(dev, got))
	require.Equal(t, bytes.Repeat([]byte{7}, 4096), got)
}
