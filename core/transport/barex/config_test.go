package barex

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
)

func env(kv map[string]string) config.LookupFunc {
	return func(k string) (string, bool) {
		v, ok := kv[k]
		return v, ok
	}
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Config
		wantErr []string // variables the error must name
	}{
		{name: "nothing set", env: nil, want: Config{}},
		{name: "every variable", env: map[string]string{
			"ACCL_MIN_PORT": "20000", "ACCL_MAX_PORT": "20100", "MC_MIN_REG_SIZE": "1048576",
			"MC_NUM_QP_PER_EP": "4", "ACCL_USE_NICS": "soe_0,soe_1", "BAREX_USE_RANDOM_DEV": "1",
			"ACCL_USE_CPU": "1", "ACCL_LOCAL_DEVICE": "3", "MC_BAREX_SHIM": "/opt/shim.so",
		}, want: Config{MinPort: 20000, MaxPort: 20100, RegChunkSize: 1 << 20, NumQPPerEP: 4,
			UseNICs: "soe_0,soe_1", UseNICsSet: true, RandomDevice: true, UseCPU: true,
			LocalDevice: 3, LocalDeviceSet: true, ShimPath: "/opt/shim.so"}},
		{name: "zero flags", env: map[string]string{"BAREX_USE_RANDOM_DEV": "0", "ACCL_USE_CPU": "0", "ACCL_LOCAL_DEVICE": "0"},
			want: Config{LocalDeviceSet: true}},
		{name: "empty nic list is unset", env: map[string]string{"ACCL_USE_NICS": " "}, want: Config{}},
		{name: "negative flags are on, as atoi reads them", env: map[string]string{"BAREX_USE_RANDOM_DEV": "-3", "ACCL_USE_CPU": " 2 "},
			want: Config{RandomDevice: true, UseCPU: true}},
		{name: "port below 1025", env: map[string]string{"ACCL_MIN_PORT": "80"}, wantErr: []string{"ACCL_MIN_PORT"}},
		{name: "port above 65535", env: map[string]string{"ACCL_MAX_PORT": "70000"}, wantErr: []string{"ACCL_MAX_PORT"}},
		{name: "min above max", env: map[string]string{"ACCL_MIN_PORT": "30000", "ACCL_MAX_PORT": "20000"}, wantErr: []string{"ACCL_MIN_PORT"}},
		{name: "garbage everywhere", env: map[string]string{"ACCL_MIN_PORT": "x", "MC_MIN_REG_SIZE": "64M",
			"MC_NUM_QP_PER_EP": "0", "ACCL_USE_CPU": "true", "ACCL_LOCAL_DEVICE": "-1", "BAREX_USE_RANDOM_DEV": "1.5"},
			wantErr: []string{"ACCL_MIN_PORT", "MC_MIN_REG_SIZE", "MC_NUM_QP_PER_EP", "ACCL_USE_CPU", "ACCL_LOCAL_DEVICE", "BAREX_USE_RANDOM_DEV"}},
		{name: "chunk of 4 GiB", env: map[string]string{"MC_MIN_REG_SIZE": "4294967296"}, wantErr: []string{"MC_MIN_REG_SIZE"}},
		{name: "chunk of zero", env: map[string]string{"MC_MIN_REG_SIZE": "0"}, wantErr: []string{"MC_MIN_REG_SIZE"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigFromEnv(env(tc.env))
			if tc.wantErr != nil {
				require.ErrorIs(t, err, config.ErrInvalid)
				for _, v := range tc.wantErr {
					require.Contains(t, err.Error(), v+"=")
				}
				require.Equal(t, Config{}, got, "a bad environment yields no configuration")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	require.NoError(t, err)
	require.Equal(t, Config{MinPort: 17000, MaxPort: 35000, RegChunkSize: 64 << 20, NumQPPerEP: 2,
		ConnectTimeout: 3 * time.Second, HandshakeTimeout: 15 * time.Second, DrainTimeout: 5 * time.Second}, c)

	bad := []struct {
		name  string
		cfg   Config
		field string
	}{
		{name: "ports reversed", cfg: Config{MinPort: 30000, MaxPort: 20000}, field: "MinPort"},
		{name: "min below the default max but above an explicit one", cfg: Config{MinPort: 36000}, field: "MinPort"},
		{name: "privileged port", cfg: Config{MinPort: 100, MaxPort: 200}, field: "MinPort"},
		{name: "too many channels", cfg: Config{NumQPPerEP: 256}, field: "NumQPPerEP"},
		{name: "negative channels", cfg: Config{NumQPPerEP: -1}, field: "NumQPPerEP"},
		{name: "chunk too big", cfg: Config{RegChunkSize: 1 << 32}, field: "RegChunkSize"},
		{name: "negative gpu", cfg: Config{LocalDevice: -2, LocalDeviceSet: true}, field: "LocalDevice"},
		{name: "negative timeout", cfg: Config{DrainTimeout: -time.Second}, field: "DrainTimeout"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.withDefaults()
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.Contains(t, err.Error(), tc.field)
		})
	}
}

func TestShimCandidates(t *testing.T) {
	tests := []struct {
		name     string
		explicit string
		self     string
		want     []string
	}{
		{name: "explicit path only", explicit: "/opt/x/shim.so", self: "/site/pymooncake/_gopy/_x.so", want: []string{"/opt/x/shim.so"}},
		{name: "next to the extension, its package, then the loader path", self: "/site/pymooncake/_gopy/_x.so",
			want: []string{"/site/pymooncake/_gopy/" + ShimName, "/site/pymooncake/" + ShimName, ShimName}},
		{name: "unknown self", want: []string{ShimName}},
		{name: "relative self is not trusted", self: "a.out", want: []string{ShimName}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, shimCandidates(tc.explicit, tc.self))
		})
	}
}

func TestCodes(t *testing.T) {
	require.Equal(t, "channel setup failed", CodeConnect.Error())
	require.Equal(t, "barex shim error -99", Code(-99).Error())
	e := &ShimError{Op: "mcbx_connect", Code: CodeTimedOut, Detail: "barex: timer expired"}
	require.ErrorIs(t, e, CodeTimedOut)
	require.ErrorIs(t, e, context.DeadlineExceeded)
	require.ErrorIs(t, &ShimError{Op: "mcbx_post", Code: CodeClosed}, ErrClosed)
	require.NotErrorIs(t, e, ErrClosed)
	require.Equal(t, "mcbx_connect: timed out: barex: timer expired", e.Error())
	require.ErrorIs(t, ErrNoDevices, ErrUnavailable)
}

// TestOpenNativeMissing holds in every build (with cgo the real loader,
// without it the stub): a missing shim is unavailability naming the library.
func TestOpenNativeMissing(t *testing.T) {
	n, err := openNative("/nonexistent/"+ShimName, nativeConfig{minPort: 17000, maxPort: 35000})
	require.Nil(t, n)
	require.ErrorIs(t, err, ErrUnavailable)
	require.Contains(t, err.Error(), ShimName)
}
