package handshake

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
)

func intPtr(v int) *int { return &v }

func TestHandShakeDescMarshal(t *testing.T) {
	for _, tc := range []struct {
		name string
		desc HandShakeDesc
		want string
	}{
		{"empty is HEAD form", HandShakeDesc{}, emptyDescHEAD},
		{"empty qp slice", HandShakeDesc{QPNum: []uint32{}}, emptyDescHEAD},
		{
			"rdma active side",
			HandShakeDesc{
				LocalNICPath: "10.0.0.1:15873@mlx5_0", PeerNICPath: "10.0.0.2:16001@mlx5_1",
				QPNum: []uint32{1234, 4294967295}, LocalLID: 65535,
				LocalGID: "fe80:0000:0000:0000:0000:0000:0000:0001",
			},
			`{"local_gid":"fe80:0000:0000:0000:0000:0000:0000:0001","local_lid":65535,` +
				`"local_nic_path":"10.0.0.1:15873@mlx5_0","payload":"","peer_nic_path":"10.0.0.2:16001@mlx5_1",` +
				`"qp_num":[1234,4294967295],"reply_msg":""}` + "\n",
		},
		{
			"barex port first",
			HandShakeDesc{BarexPort: intPtr(17001), ReplyMsg: "no such nic"},
			`{"barex_port":17001,"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":"no such nic"}` + "\n",
		},
		{
			"negative barex port",
			HandShakeDesc{BarexPort: intPtr(-1)},
			`{"barex_port":-1,"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""}` + "\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.desc.Marshal()
			require.NoError(t, err)
			require.Equal(t, tc.want, string(got))
			require.True(t, json.Valid(got))
		})
	}
}

func TestDecodeHandShakeDesc(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want HandShakeDesc
	}{
		{"PR form", emptyDescPR, HandShakeDesc{}},
		{"HEAD form", emptyDescHEAD, HandShakeDesc{}},
		{"null", "null\n", HandShakeDesc{}},
		{"empty object", "{}", HandShakeDesc{}},
		{"null fields", `{"local_nic_path":null,"qp_num":null,"barex_port":null,"local_lid":null}`, HandShakeDesc{}},
		{
			"HEAD rdma with unknown fields",
			`{"efa_addr":"x","local_gid":"g","local_lid":7,"local_nic_path":"a@mlx5_0","payload":"p",` +
				`"peer_nic_path":"b@mlx5_1","qp_num":[1,2],"ready_ack":true,"reply_msg":"","jetty_num":[9]}`,
			HandShakeDesc{LocalGID: "g", LocalLID: 7, LocalNICPath: "a@mlx5_0", Payload: "p", PeerNICPath: "b@mlx5_1", QPNum: []uint32{1, 2}},
		},
		{"barex", `{"barex_port":17001,"qp_num":[]}`, HandShakeDesc{BarexPort: intPtr(17001)}},
		{"rejection", `{"reply_msg":"peer nic path mismatch"}`, HandShakeDesc{ReplyMsg: "peer nic path mismatch"}},
		{"lid not uint reads 0", `{"local_lid":-1,"local_gid":5}`, HandShakeDesc{}},
		{"lid above u16 reads 0", `{"local_lid":65536}`, HandShakeDesc{}},
		{"lid string reads 0", `{"local_lid":"7","local_gid":"g"}`, HandShakeDesc{LocalGID: "g"}},
		{"keys are case sensitive", `{"LOCAL_NIC_PATH":"x","reply_msg":"y"}`, HandShakeDesc{ReplyMsg: "y"}},
		{"last duplicate wins", `{"reply_msg":"a","reply_msg":"b"}`, HandShakeDesc{ReplyMsg: "b"}},
		{"escapes", `{"payload":"\u00e9\ud83d\ude00\n\"\\"}`, HandShakeDesc{Payload: "é😀\n\"\\"}},
		{"whitespace", " \t{ \"reply_msg\" : \"x\" }\n\n", HandShakeDesc{ReplyMsg: "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeHandShakeDesc([]byte(tc.in))
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestDecodeHandShakeDescMalformed(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"not json", "{"},
		{"trailing garbage", "{}x"},
		{"array", "[]"},
		{"string", `"x"`},
		{"number", "1"},
		{"nic path number", `{"local_nic_path":1}`},
		{"reply_msg bool", `{"reply_msg":true}`},
		{"qp_num object", `{"qp_num":{"a":1}}`},
		{"qp_num negative", `{"qp_num":[-1]}`},
		{"qp_num over u32", `{"qp_num":[4294967296]}`},
		{"qp_num fraction", `{"qp_num":[1.5]}`},
		{"qp_num string", `{"qp_num":["1"]}`},
		{"barex over i32", `{"barex_port":2147483648}`},
		{"barex string", `{"barex_port":"17001"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeHandShakeDesc([]byte(tc.in))
			require.ErrorIs(t, err, ErrMalformed)
			require.Zero(t, got)
		})
	}
}

func TestHandShakeDescRoundTrip(t *testing.T) {
	in := HandShakeDesc{
		LocalNICPath: "h:1@d", PeerNICPath: "p:2@e", QPNum: []uint32{0, 1, 1 << 31},
		ReplyMsg: "\x00\x1f\x7f ü €", Payload: "😀", LocalLID: 3, LocalGID: "g", BarexPort: intPtr(-5),
	}
	b, err := in.Marshal()
	require.NoError(t, err)
	out, err := DecodeHandShakeDesc(b)
	require.NoError(t, err)
	require.Equal(t, in, out)
}

func TestNotifyMsg(t *testing.T) {
	b, err := NotifyMsg{Name: "job1", Msg: "hello"}.Marshal()
	require.NoError(t, err)
	require.Equal(t, notifyJob1, string(b))

	b, err = NotifyMsg{}.Marshal()
	require.NoError(t, err)
	require.Equal(t, `{"name":"","notify_msg":""}`+"\n", string(b))

	require.Equal(t, `{"name":"","notify_msg":"success"}`+"\n", string(NotifyAck()))
	require.Equal(t, `{"name":"full","notify_msg":""}`+"\n", string(NotifyRefusal("full")), "Mooncake's sender sees an empty notify_msg")
	require.Equal(t, "{}\n", string(ProbeRequest()))
	require.Equal(t, `{"status":"success"}`+"\n", string(ProbeReply()))

	// The fixed bodies are fresh copies: a caller may modify one.
	NotifyAck()[0] = 'x'
	require.Equal(t, byte('{'), NotifyAck()[0])
}

func TestDecodeNotifyMsg(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want NotifyMsg
	}{
		{"request", notifyJob1, NotifyMsg{Name: "job1", Msg: "hello"}},
		{"ack", string(NotifyAck()), NotifyMsg{Msg: "success"}},
		{"null", "null\n", NotifyMsg{}},
		{"missing fields", `{"other":1}`, NotifyMsg{}},
		{"null fields", `{"name":null,"notify_msg":null}`, NotifyMsg{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeNotifyMsg([]byte(tc.in))
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"array", `["a"]`},
		{"name number", `{"name":1}`},
		{"msg object", `{"notify_msg":{}}`},
	} {
		t.Run("malformed "+tc.name, func(t *testing.T) {
			got, err := DecodeNotifyMsg([]byte(tc.in))
			require.ErrorIs(t, err, ErrMalformed)
			require.Zero(t, got)
		})
	}
}

// Strings are escaped as jsoncpp 1.9.5's FastWriter escapes them.
func TestAppendQuotedLikeJsoncpp(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "10.0.0.1:15873@mlx5_0", `"10.0.0.1:15873@mlx5_0"`},
		{"short escapes", "\"\\\b\f\n\r\t", `"\"\\\b\f\n\r\t"`},
		{"slash and del kept", "a/b\x7f", "\"a/b\x7f\""},
		{"control bytes", "\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"two-byte", "é", `"\u00e9"`},
		{"three-byte", "€", `"\u20ac"`},
		{"astral is a surrogate pair", "😀", `"\ud83d\ude00"`},
		{"lone continuation byte as a lead", "\x9fa", `"\u07e1"`},
		{"lone continuation byte overlong", "\x80a", `"\ufffd"`},
		{"truncated two-byte at end", "a\xc3", `"a\ufffd"`},
		{"overlong two-byte", "\xc0\xaf", `"\ufffd"`},
		{"encoded surrogate", "\xed\xa0\x80", `"\ufffd"`},
		{"overlong three-byte", "\xe0\x80\xaf", `"\ufffd"`},
		{"continuation not checked", "\xc3\x22x", `"\u00e2x"`},
		{"lead byte f8 and up", "\xf8\xff", `"\ufffd\ufffd"`},
		{"beyond U+10FFFF", "\xf7\xbf\xbf\xbf", `"\udbbf\udfff"`},
		{"truncated four-byte", "\xf0\x9f\x98", `"\ufffd\u07d8"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, string(appendQuoted(nil, tc.in)))
		})
	}
}

func FuzzDecodeHandShakeDesc(f *testing.F) {
	for _, s := range []string{
		emptyDescPR, emptyDescHEAD, "null\n", "{}", "[]", `{"qp_num":[1,2],"barex_port":3}`,
		`{"local_lid":70000,"local_gid":1}`, `{"reply_msg":"\ud83d"}`, "{\"payload\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHandShakeDesc(b)
		if err != nil {
			if !reflect.DeepEqual(h, HandShakeDesc{}) {
				t.Fatalf("error %v with non-zero result %+v", err, h)
			}
			return
		}
		out, err := h.Marshal()
		if err != nil || !json.Valid(out) {
			t.Fatalf("marshal %+v: %q, %v", h, out, err)
		}
		back, err := DecodeHandShakeDesc(out)
		if err != nil {
			t.Fatalf("decode own encoding %q: %v", out, err)
		}
		if !reflect.DeepEqual(h, back) {
			t.Fatalf("round trip: %+v became %+v", h, back)
		}
	})
}

func FuzzDecodeNotifyMsg(f *testing.F) {
	for _, s := range []string{notifyJob1, string(NotifyAck()), "null", "{}", `{"name":1}`, "[]", `{"name":"\u00e9"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := DecodeNotifyMsg(b)
		if err != nil {
			if n != (NotifyMsg{}) {
				t.Fatalf("error %v with result %+v", err, n)
			}
			return
		}
		out, err := n.Marshal()
		if err != nil || !json.Valid(out) {
			t.Fatalf("marshal %+v: %q, %v", n, out, err)
		}
		back, err := DecodeNotifyMsg(out)
		if err != nil {
			t.Fatalf("decode own encoding %q: %v", out, err)
		}
		if back != n {
			t.Fatalf("round trip: %+v became %+v", n, back)
		}
	})
}
