package metadata

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// docTCPHead is the HEAD FastWriter output quoted in protocol.md §2.3.
const docTCPHead = `{"buffers":[{"addr":139716164190208,"length":2147483648,"name":"127.0.0.1:16001"}],"name":"127.0.0.1:16001","protocol":"tcp","tcp_data_port":15234,"tcp_proto_version":2,"timestamp":"2026-08-22 10:00:00.123456"}` + "\n"

const goldenTime = "2026-08-22 10:00:00.123456"

func tcpHead() *SegmentDesc {
	return &SegmentDesc{
		Name:            "127.0.0.1:16001",
		Protocol:        ProtocolTCP,
		TCPDataPort:     15234,
		TCPProtoVersion: 2,
		Timestamp:       goldenTime,
		Buffers:         []BufferDesc{{Name: "127.0.0.1:16001", Addr: 139716164190208, Length: 2147483648}},
	}
}

func tcpEmpty() *SegmentDesc {
	return &SegmentDesc{Name: "127.0.0.1:16002", Protocol: ProtocolTCP, TCPDataPort: 15001,
		TCPProtoVersion: 2, Timestamp: goldenTime}
}

func rdmaDesc() *SegmentDesc {
	return &SegmentDesc{
		Name:            "10.0.0.1:15873",
		Protocol:        ProtocolRDMA,
		TCPProtoVersion: 1,
		Timestamp:       goldenTime,
		RDMAServerName:  "10.0.1.1:15873",
		Devices: []DeviceDesc{
			{Name: "mlx5_0", LID: 0, GID: "fe:80:00:00:00:00:00:00:0e:42:a1:ff:fe:3b:5c:10"},
			{Name: "mlx5_1", LID: 7, GID: "00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:01:01"},
		},
		Buffers: []BufferDesc{
			{Name: "cpu:0", Addr: 0x7f3a40000000, Length: 1 << 30,
				RKey: []uint32{0x1a2b3c, 4294967295}, LKey: []uint32{0x1a2b3d, 0}},
			{Name: "cuda:0", Addr: 0x7f0000200000, Length: 64 << 20, RKey: []uint32{11, 22}, LKey: []uint32{33, 44}},
			{Name: "*", Addr: 0x10000, Length: 4096},
		},
		PriorityMatrix: map[string]PriorityEntry{
			"cpu:0":  {Preferred: []string{"mlx5_0"}, Available: []string{"mlx5_1"}},
			"cuda:0": {Preferred: []string{"mlx5_1", "mlx5_0"}},
		},
	}
}

func barexDesc() *SegmentDesc {
	return &SegmentDesc{
		Name:            "10.0.0.2:15874",
		Protocol:        ProtocolBarex,
		TCPProtoVersion: 1,
		Timestamp:       goldenTime,
		Devices:         []DeviceDesc{{Name: "mlx5_0", GID: "ignore"}, {Name: "mlx5_1", GID: "ignore"}},
		Buffers: []BufferDesc{{Name: "cpu:0", Addr: 0x7f3a40000000, Length: 64 << 20,
			RKey: []uint32{1, 2, 3}, LKey: []uint32{4, 5, 6}}},
	}
}

func escapesDesc() *SegmentDesc {
	odd := "a\"b\\c/d\x01\x1f\x7f\b\f\n\r\té€😀"
	return &SegmentDesc{Name: odd, Protocol: ProtocolTCP, TCPDataPort: 1, TCPProtoVersion: 2,
		Timestamp: goldenTime, Buffers: []BufferDesc{{Name: odd, Addr: 1, Length: 1}}}
}

func readGolden(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(tb, err)
	return b
}

func TestDocLiteralMatchesGolden(t *testing.T) {
	require.Equal(t, docTCPHead, string(readGolden(t, "tcp_head.fast.json")))
	require.Equal(t, strings.TrimSuffix(docTCPHead, "\n"), string(readGolden(t, "tcp_head.put.json")))
}

var segmentGoldens = []struct {
	file    string
	desc    func() *SegmentDesc
	newline bool
}{
	{"tcp_head.fast.json", tcpHead, true},
	{"tcp_head.put.json", tcpHead, false},
	{"tcp_empty.fast.json", tcpEmpty, true},
	{"tcp_escapes.fast.json", escapesDesc, true},
	{"rdma.fast.json", rdmaDesc, true},
	{"rdma.put.json", rdmaDesc, false},
	{"barex.fast.json", barexDesc, true},
}

func TestSegmentDescGolden(t *testing.T) {
	for _, tc := range segmentGoldens {
		t.Run(tc.file, func(t *testing.T) {
			golden := readGolden(t, tc.file)
			out, err := tc.desc().Marshal(tc.newline)
			require.NoError(t, err)
			require.Equal(t, string(golden), string(out))

			got, err := DecodeSegmentDesc(golden)
			require.NoError(t, err)
			require.Equal(t, tc.desc(), got)
		})
	}
}

// TestGoldenFilesCovered fails when a golden file is added without a test.
func TestGoldenFilesCovered(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	covered := []string{"tcp_pr.fast.json", "rpc_meta.fast.json", "rpc_meta.put.json"}
	for _, tc := range segmentGoldens {
		covered = append(covered, tc.file)
	}
	for _, f := range files {
		require.Contains(t, covered, filepath.Base(f))
	}
}

func TestDecodePRFormDefaultsToVersion1(t *testing.T) {
	got, err := DecodeSegmentDesc(readGolden(t, "tcp_pr.fast.json"))
	require.NoError(t, err)
	want := tcpHead()
	want.TCPProtoVersion = 1
	require.Equal(t, want, got)

	// Re-encoded, it carries the version explicitly, as a HEAD engine would.
	out, err := got.Marshal(true)
	require.NoError(t, err)
	require.Equal(t, strings.Replace(docTCPHead, `"tcp_proto_version":2`, `"tcp_proto_version":1`, 1), string(out))
}

type acceptedDesc struct {
	name  string
	input string
	want  *SegmentDesc
}

// acceptedDescs are descriptors DecodeSegmentDesc must accept, with the
// result each must decode to.
func acceptedDescs(tb testing.TB) []acceptedDesc {
	withExtra := func(d *SegmentDesc, extra map[string]string) *SegmentDesc {
		d.Extra = map[string]json.RawMessage{}
		for k, v := range extra {
			d.Extra[k] = json.RawMessage(v)
		}
		return d
	}
	withVersion := func(d *SegmentDesc, v int) *SegmentDesc {
		d.TCPProtoVersion = v
		return d
	}
	rdmaNoMatrix := func() *SegmentDesc {
		d := rdmaDesc()
		d.PriorityMatrix = nil
		return d
	}
	tests := []acceptedDesc{
		{"fast writer form", docTCPHead, tcpHead()},
		{"put form", strings.TrimSpace(docTCPHead), tcpHead()},
		{"indented with CRLF", "\r\n {\n \"timestamp\" : \"" + goldenTime + "\",\n\t\"tcp_proto_version\": 2,\n" +
			"  \"tcp_data_port\": 15234, \"protocol\": \"tcp\", \"name\": \"127.0.0.1:16001\",\n" +
			"  \"buffers\": [ { \"name\": \"127.0.0.1:16001\", \"length\": 2147483648, \"addr\": 139716164190208 } ]\n}\r\n\n",
			tcpHead()},
		{"unknown keys kept",
			`{"zz":{"b" : [1, 2]},"buffers":[],"name":"127.0.0.1:16002","protocol":"tcp","tcp_data_port":15001,` +
				`"tcp_proto_version":2,"timestamp":"` + goldenTime + `","a":null,"Name":"x"}`,
			withExtra(tcpEmpty(), map[string]string{"zz": `{"b":[1,2]}`, "a": `null`, "Name": `"x"`})},
		{"tcp ignores rdma fields",
			`{"buffers":[],"devices":"junk","priority_matrix":7,"name":"127.0.0.1:16002","protocol":"tcp",` +
				`"tcp_data_port":15001,"tcp_proto_version":2,"timestamp":"` + goldenTime + `"}`,
			tcpEmpty()},
		{"tcp ignores buffer keys",
			`{"buffers":[{"addr":139716164190208,"length":2147483648,"name":"127.0.0.1:16001","rkey":[1],"lkey":[1,2],"device_id":3}],` +
				`"name":"127.0.0.1:16001","protocol":"tcp","tcp_data_port":15234,"tcp_proto_version":2,"timestamp":"` + goldenTime + `"}`,
			tcpHead()},
		{"nulls read as zero values",
			`{"buffers":null,"name":"127.0.0.1:16002","protocol":"tcp","tcp_data_port":null,"tcp_proto_version":null,"timestamp":null}`,
			withVersion(&SegmentDesc{Name: "127.0.0.1:16002", Protocol: ProtocolTCP}, 0)},
		{"missing version is 1", `{"name":"n","protocol":"tcp"}`,
			&SegmentDesc{Name: "n", Protocol: ProtocolTCP, TCPProtoVersion: 1}},
		{"duplicate key: last wins", `{"name":"a","protocol":"rdma","name":"n","protocol":"tcp"}`,
			&SegmentDesc{Name: "n", Protocol: ProtocolTCP, TCPProtoVersion: 1}},
		{"largest addr", `{"buffers":[{"addr":18446744073709551614,"length":1,"name":"n"}],"name":"n","protocol":"tcp"}`,
			&SegmentDesc{Name: "n", Protocol: ProtocolTCP, TCPProtoVersion: 1,
				Buffers: []BufferDesc{{Name: "n", Addr: 18446744073709551614, Length: 1}}}},
		{"barex keys need not match devices", string(readGolden(tb, "barex.fast.json")), barexDesc()},
		{"rdma keyless buffer with lkeys (HEAD)",
			`{"buffers":[{"addr":1,"length":1,"name":"*","lkey":[5]}],"name":"n","protocol":"rdma"}`,
			&SegmentDesc{Name: "n", Protocol: ProtocolRDMA, TCPProtoVersion: 1,
				Buffers: []BufferDesc{{Name: "*", Addr: 1, Length: 1, LKey: []uint32{5}}}}},
	}
	for _, pm := range []string{`"x"`, `[]`, `{"cpu:0":[["a"]]}`, `{"cpu:0":[[1],[2]]}`, `{"cpu:0":null}`, `{}`, `null`} {
		in := strings.Replace(string(readGolden(tb, "rdma.fast.json")),
			`{"cpu:0":[["mlx5_0"],["mlx5_1"]],"cuda:0":[["mlx5_1","mlx5_0"],[]]}`, pm, 1)
		tests = append(tests, acceptedDesc{"priority_matrix " + pm + " ignored", in, rdmaNoMatrix()})
	}
	return tests
}

func TestDecodeSegmentDescAccepts(t *testing.T) {
	tests := acceptedDescs(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeSegmentDesc([]byte(tc.input))
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// rejectedDescs are descriptors DecodeSegmentDesc must refuse, and the
// sentinel each error must match.
func rejectedDescs() []struct {
	name  string
	input string
	err   error
} {
	const tcpBuf = `{"buffers":[%s],"name":"n","protocol":"tcp"}`
	buf := func(b string) string { return strings.Replace(tcpBuf, "%s", b, 1) }
	rdma := func(devices, buffers string) string {
		return `{"buffers":[` + buffers + `],"devices":[` + devices + `],"name":"n","protocol":"rdma"}`
	}
	barex := func(devices, buffers string) string {
		return `{"buffers":[` + buffers + `],"devices":[` + devices + `],"name":"n","protocol":"barex"}`
	}
	const dev = `{"name":"mlx5_0","lid":0,"gid":"fe:80"}`
	deep := `{"x":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `,"name":"n","protocol":"tcp"}`

	return []struct {
		name  string
		input string
		err   error
	}{
		{"empty input", "", ErrMalformed},
		{"whitespace only", " \n", ErrMalformed},
		{"null", "null", ErrMalformed},
		{"array", `[]`, ErrMalformed},
		{"string", `"tcp"`, ErrMalformed},
		{"truncated", `{"name":"n","protocol":"tcp"`, ErrMalformed},
		{"truncated inside buffers", `{"buffers":[{"addr":1`, ErrMalformed},
		{"trailing garbage", `{"name":"n","protocol":"tcp"} x`, ErrMalformed},
		{"two documents", `{"name":"n","protocol":"tcp"}{}`, ErrMalformed},
		{"missing comma", `{"name":"n" "protocol":"tcp"}`, ErrMalformed},
		{"no protocol", `{"name":"n"}`, ErrMalformed},
		{"protocol is a number", `{"name":"n","protocol":1}`, ErrMalformed},
		{"protocol is an object", `{"name":"n","protocol":{}}`, ErrMalformed},
		{"unknown protocol", `{"name":"n","protocol":"nvlink"}`, ErrUnsupportedProtocol},
		{"null protocol", `{"name":"n","protocol":null}`, ErrUnsupportedProtocol},
		{"upper-case protocol", `{"name":"n","protocol":"TCP"}`, ErrUnsupportedProtocol},
		{"multi-protocol", `{"name":"n","protocol":["tcp","rdma"]}`, ErrUnsupportedProtocol},
		{"efa with 64-bit keys", `{"buffers":[{"addr":1,"length":1,"name":"*","rkey":[18446744073709551615],` +
			`"lkey":[1]}],"name":"n","protocol":"efa"}`, ErrUnsupportedProtocol},
		{"name is a number", `{"name":5,"protocol":"tcp"}`, ErrMalformed},
		{"data port as string", `{"name":"n","protocol":"tcp","tcp_data_port":"15234"}`, ErrMalformed},
		{"data port negative", `{"name":"n","protocol":"tcp","tcp_data_port":-1}`, ErrMalformed},
		{"data port too big", `{"name":"n","protocol":"tcp","tcp_data_port":65536}`, ErrMalformed},
		{"version as string", `{"name":"n","protocol":"tcp","tcp_proto_version":"2"}`, ErrMalformed},
		{"version as bool", `{"name":"n","protocol":"tcp","tcp_proto_version":true}`, ErrMalformed},
		{"version too big", `{"name":"n","protocol":"tcp","tcp_proto_version":2147483648}`, ErrMalformed},
		{"buffers is an object", `{"buffers":{},"name":"n","protocol":"tcp"}`, ErrMalformed},
		{"buffer is null", buf(`null`), ErrMalformed},
		{"buffer is a number", buf(`1`), ErrMalformed},
		{"tcp buffer empty name", buf(`{"addr":1,"length":1,"name":""}`), ErrMalformed},
		{"tcp buffer no name", buf(`{"addr":1,"length":1}`), ErrMalformed},
		{"tcp buffer addr 0", buf(`{"addr":0,"length":1,"name":"n"}`), ErrMalformed},
		{"tcp buffer length 0", buf(`{"addr":1,"length":0,"name":"n"}`), ErrMalformed},
		{"one bad buffer spoils all", buf(`{"addr":1,"length":1,"name":"n"},{"addr":2,"length":1}`), ErrMalformed},
		{"addr as string", buf(`{"addr":"1","length":1,"name":"n"}`), ErrMalformed},
		{"addr negative", buf(`{"addr":-1,"length":1,"name":"n"}`), ErrMalformed},
		{"addr fractional", buf(`{"addr":1.5,"length":1,"name":"n"}`), ErrMalformed},
		{"addr exponent", buf(`{"addr":1e3,"length":1,"name":"n"}`), ErrMalformed},
		{"addr 2^64", buf(`{"addr":18446744073709551616,"length":1,"name":"n"}`), ErrMalformed},
		{"addr huge", buf(`{"addr":1` + strings.Repeat("0", 400) + `,"length":1,"name":"n"}`), ErrMalformed},
		{"length as string", buf(`{"addr":1,"length":"1","name":"n"}`), ErrMalformed},
		{"addr+length overflows", buf(`{"addr":18446744073709551615,"length":2,"name":"n"}`), ErrMalformed},
		{"rdma device without gid", rdma(`{"name":"mlx5_0","lid":0}`, ``), ErrMalformed},
		{"rdma device empty name", rdma(`{"name":"","lid":0,"gid":"fe:80"}`, ``), ErrMalformed},
		{"rdma device lid too big", rdma(`{"name":"mlx5_0","lid":65536,"gid":"fe:80"}`, ``), ErrMalformed},
		{"rdma devices not an array", `{"devices":{},"name":"n","protocol":"rdma"}`, ErrMalformed},
		{"rdma device not an object", rdma(`"mlx5_0"`, ``), ErrMalformed},
		{"rdma rkey/lkey sizes differ", rdma(dev, `{"addr":1,"length":1,"name":"*","rkey":[1],"lkey":[]}`), ErrMalformed},
		{"rdma keys not one per device", rdma(dev, `{"addr":1,"length":1,"name":"*","rkey":[1,2],"lkey":[1,2]}`), ErrMalformed},
		{"rdma key over 32 bits", rdma(dev, `{"addr":1,"length":1,"name":"*","rkey":[4294967296],"lkey":[1]}`), ErrMalformed},
		{"rdma key as string", rdma(dev, `{"addr":1,"length":1,"name":"*","rkey":["1"],"lkey":[1]}`), ErrMalformed},
		{"rdma rkey not an array", rdma(dev, `{"addr":1,"length":1,"name":"*","rkey":1,"lkey":[1]}`), ErrMalformed},
		{"rdma buffer no addr", rdma(dev, `{"length":1,"name":"*"}`), ErrMalformed},
		{"barex rkey/lkey sizes differ", barex(dev, `{"addr":1,"length":1,"name":"*","rkey":[1,2],"lkey":[1]}`), ErrMalformed},
		{"barex device gid empty", barex(`{"name":"mlx5_0","lid":0,"gid":""}`, ``), ErrMalformed},
		{"deep nesting in unknown key", deep, ErrMalformed},
		{"too large", `{"name":"n","protocol":"tcp"}` + strings.Repeat(" ", MaxDescriptorSize), ErrMalformed},
	}
}

func TestDecodeSegmentDescRejects(t *testing.T) {
	tests := rejectedDescs()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeSegmentDesc([]byte(tc.input))
			require.ErrorIs(t, err, tc.err)
			require.Nil(t, got)
			if tc.err == ErrUnsupportedProtocol {
				require.NotErrorIs(t, err, ErrMalformed)
			}
		})
	}
}

func TestMarshalExtraSortedAmongFields(t *testing.T) {
	d := tcpEmpty()
	d.Extra = map[string]json.RawMessage{
		"zz":        json.RawMessage(` { "b" : [ 1 , 2 ] } `),
		"a":         json.RawMessage(`null`),
		"p":         json.RawMessage(`"é"`),
		"Name":      json.RawMessage(`1`),
		"tcp_data~": json.RawMessage(`true`),
	}
	out, err := d.Marshal(false)
	require.NoError(t, err)
	require.Equal(t, `{"Name":1,"a":null,"buffers":[],"name":"127.0.0.1:16002","p":"é","protocol":"tcp",`+
		`"tcp_data_port":15001,"tcp_data~":true,"tcp_proto_version":2,"timestamp":"`+goldenTime+`","zz":{"b":[1,2]}}`,
		string(out))

	back, err := DecodeSegmentDesc(out)
	require.NoError(t, err)
	out2, err := back.Marshal(false)
	require.NoError(t, err)
	require.Equal(t, string(out), string(out2))
}

func TestMarshalRejects(t *testing.T) {
	tests := []struct {
		name   string
		modify func(d *SegmentDesc)
		err    error
	}{
		{"unknown protocol", func(d *SegmentDesc) { d.Protocol = "nvlink" }, ErrUnsupportedProtocol},
		{"empty protocol", func(d *SegmentDesc) { d.Protocol = "" }, ErrUnsupportedProtocol},
		{"buffer without name", func(d *SegmentDesc) { d.Buffers[0].Name = "" }, ErrMalformed},
		{"buffer without length", func(d *SegmentDesc) { d.Buffers[0].Length = 0 }, ErrMalformed},
		{"buffer overflows", func(d *SegmentDesc) { d.Buffers[0].Addr = ^uint64(0) }, ErrMalformed},
		{"negative data port", func(d *SegmentDesc) { d.TCPDataPort = -1 }, ErrMalformed},
		{"data port too big", func(d *SegmentDesc) { d.TCPDataPort = 65536 }, ErrMalformed},
		{"negative version", func(d *SegmentDesc) { d.TCPProtoVersion = -1 }, ErrMalformed},
		{"extra shadows a field", func(d *SegmentDesc) {
			d.Extra = map[string]json.RawMessage{"devices": json.RawMessage(`[]`)}
		}, ErrMalformed},
		{"extra not JSON", func(d *SegmentDesc) { d.Extra = map[string]json.RawMessage{"x": json.RawMessage(`{`)} }, ErrMalformed},
		{"extra two values", func(d *SegmentDesc) { d.Extra = map[string]json.RawMessage{"x": json.RawMessage(`1 2`)} }, ErrMalformed},
		{"extra empty", func(d *SegmentDesc) { d.Extra = map[string]json.RawMessage{"x": nil} }, ErrMalformed},
		{"rdma keys not one per device", func(d *SegmentDesc) {
			d.Protocol = ProtocolRDMA
			d.Devices = []DeviceDesc{{Name: "mlx5_0", GID: "fe:80"}}
			d.Buffers[0].RKey, d.Buffers[0].LKey = []uint32{1, 2}, []uint32{1, 2}
		}, ErrMalformed},
		{"rdma device without gid", func(d *SegmentDesc) {
			d.Protocol = ProtocolRDMA
			d.Devices = []DeviceDesc{{Name: "mlx5_0"}}
		}, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := tcpHead()
			tc.modify(d)
			out, err := d.Marshal(true)
			require.ErrorIs(t, err, tc.err)
			require.Nil(t, out)
		})
	}
	t.Run("nil descriptor", func(t *testing.T) {
		var d *SegmentDesc
		out, err := d.Marshal(true)
		require.ErrorIs(t, err, ErrMalformed)
		require.Nil(t, out)
	})
}

func TestMarshalTCPOmitsRDMAFields(t *testing.T) {
	d := tcpHead()
	d.Devices = []DeviceDesc{{Name: "mlx5_0", GID: "fe:80"}}
	d.Buffers[0].RKey, d.Buffers[0].LKey = []uint32{1}, []uint32{2}
	d.PriorityMatrix = map[string]PriorityEntry{"cpu:0": {}}
	out, err := d.Marshal(true)
	require.NoError(t, err)
	require.Equal(t, docTCPHead, string(out))
}

func TestMarshalFillsTimestamp(t *testing.T) {
	d := tcpEmpty()
	d.Timestamp = ""
	out, err := d.Marshal(true)
	require.NoError(t, err)
	require.Empty(t, d.Timestamp, "Marshal must not modify the descriptor")
	got, err := DecodeSegmentDesc(out)
	require.NoError(t, err)
	require.Regexp(t, regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$`), got.Timestamp)
}

func TestMarshalKeepsUint64Exact(t *testing.T) {
	// float64 would round these; they must survive to the last digit.
	d := &SegmentDesc{Name: "n", Protocol: ProtocolTCP, Timestamp: goldenTime, Buffers: []BufferDesc{
		{Name: "n", Addr: 18446744073709551000, Length: 615},
		{Name: "n", Addr: 9007199254740993, Length: 9007199254740993},
	}}
	out, err := d.Marshal(false)
	require.NoError(t, err)
	require.Contains(t, string(out), `"addr":18446744073709551000,"length":615`)
	require.Contains(t, string(out), `"addr":9007199254740993,"length":9007199254740993`)
	got, err := DecodeSegmentDesc(out)
	require.NoError(t, err)
	require.Equal(t, d.Buffers, got.Buffers)
}

func TestTimestamp(t *testing.T) {
	ts := time.Date(2026, 8, 22, 10, 0, 0, 123456789, time.Local)
	require.Equal(t, "2026-08-22 10:00:00.123456", Timestamp(ts))
	require.Equal(t, "2026-01-02 03:04:05.000007", Timestamp(time.Date(2026, 1, 2, 3, 4, 5, 7999, time.Local)))
	// Other zones are shown in local time.
	require.Equal(t, Timestamp(ts), Timestamp(ts.UTC()))
}

func TestClone(t *testing.T) {
	require.Nil(t, (*SegmentDesc)(nil).Clone())
	orig := rdmaDesc()
	orig.Extra = map[string]json.RawMessage{"x": json.RawMessage(`[1]`)}
	want := rdmaDesc()
	want.Extra = map[string]json.RawMessage{"x": json.RawMessage(`[1]`)}

	c := orig.Clone()
	require.Equal(t, orig, c)
	c.Buffers[0].RKey[0] = 99
	c.Buffers[1].Name = "x"
	c.Devices[0].GID = "x"
	c.PriorityMatrix["cpu:0"].Preferred[0] = "x"
	c.PriorityMatrix["new"] = PriorityEntry{}
	c.Extra["x"][1] = '2'
	c.Extra["y"] = nil
	require.Equal(t, want, orig)
}

func TestAppendQuotedMatchesJsoncpp(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "mlx5_0", `"mlx5_0"`},
		{"slash kept", "a/b", `"a/b"`},
		{"short escapes", "\"\\\b\f\n\r\t", `"\"\\\b\f\n\r\t"`},
		{"control", "\x00\x1f", `"\u0000\u001f"`},
		{"DEL raw", "\x7f", "\"\x7f\""},
		{"BMP lower-case hex", "é\u20ac\uffff", `"\u00e9\u20ac\uffff"`},
		{"surrogate pair", "😀", `"\ud83d\ude00"`},
		{"invalid UTF-8", "a\xffb", `"a\ufffdb"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, string(quoted(tc.in)))
			var back string
			require.NoError(t, json.Unmarshal(quoted(tc.in), &back))
			if utf8.ValidString(tc.in) {
				require.Equal(t, tc.in, back)
			}
		})
	}
}
