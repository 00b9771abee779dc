package metadata

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRPCMetaGolden(t *testing.T) {
	want := RPCMeta{IPOrHostName: "10.0.0.5", RPCPort: 15678}
	for _, tc := range []struct {
		file    string
		newline bool
	}{
		{"rpc_meta.fast.json", true},
		{"rpc_meta.put.json", false},
	} {
		t.Run(tc.file, func(t *testing.T) {
			golden := readGolden(t, tc.file)
			out, err := want.Marshal(tc.newline)
			require.NoError(t, err)
			require.Equal(t, string(golden), string(out))
			got, err := DecodeRPCMeta(golden)
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
}

var rpcMetaTests = []struct {
	name  string
	input string
	want  RPCMeta
	err   error
}{
	{"fast writer", `{"ip_or_host_name":"10.0.0.5","rpc_port":15678}` + "\n", RPCMeta{"10.0.0.5", 15678}, nil},
	{"spaced, reordered", " {\n \"rpc_port\" : 1 ,\"ip_or_host_name\":\"h\"}\n", RPCMeta{"h", 1}, nil},
	{"unknown keys ignored", `{"ip_or_host_name":"h","rpc_port":65535,"x":{"y":[1]}}`, RPCMeta{"h", 65535}, nil},
	{"IPv6 host", `{"ip_or_host_name":"fe80::1%eth0","rpc_port":15000}`, RPCMeta{"fe80::1%eth0", 15000}, nil},
	{"empty", ``, RPCMeta{}, ErrMalformed},
	{"not an object", `[1]`, RPCMeta{}, ErrMalformed},
	{"null", `null`, RPCMeta{}, ErrMalformed},
	{"port as string", `{"ip_or_host_name":"h","rpc_port":"15678"}`, RPCMeta{}, ErrMalformed},
	{"port zero", `{"ip_or_host_name":"h","rpc_port":0}`, RPCMeta{}, ErrMalformed},
	{"port missing", `{"ip_or_host_name":"h"}`, RPCMeta{}, ErrMalformed},
	{"port too big", `{"ip_or_host_name":"h","rpc_port":65536}`, RPCMeta{}, ErrMalformed},
	{"port negative", `{"ip_or_host_name":"h","rpc_port":-1}`, RPCMeta{}, ErrMalformed},
	{"port fractional", `{"ip_or_host_name":"h","rpc_port":1.0}`, RPCMeta{}, ErrMalformed},
	{"host missing", `{"rpc_port":1}`, RPCMeta{}, ErrMalformed},
	{"host a number", `{"ip_or_host_name":1,"rpc_port":1}`, RPCMeta{}, ErrMalformed},
	{"trailing garbage", `{"ip_or_host_name":"h","rpc_port":1}]`, RPCMeta{}, ErrMalformed},
	{"deep nesting", `{"x":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`, RPCMeta{}, ErrMalformed},
}

func TestDecodeRPCMeta(t *testing.T) {
	for _, tc := range rpcMetaTests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeRPCMeta([]byte(tc.input))
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestRPCMetaMarshalRejects(t *testing.T) {
	for _, m := range []RPCMeta{{"", 1}, {"h", 0}, {"h", -1}, {"h", 65536}} {
		out, err := m.Marshal(true)
		require.ErrorIs(t, err, ErrMalformed, "%+v", m)
		require.Nil(t, out)
	}
}
