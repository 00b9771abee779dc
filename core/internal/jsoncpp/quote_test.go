package jsoncpp

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Expected bytes are jsoncpp 1.9.5 FastWriter's for the same input.
func TestAppendQuoted(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "127.0.0.1:15000", `"127.0.0.1:15000"`},
		{"short escapes", "a\"b\\c\b\f\n\r\t", `"a\"b\\c\b\f\n\r\t"`},
		{"control and DEL", "\x01\x7f", `"\u0001` + "\x7f" + `"`},
		{"non-ASCII", "é€", `"\u00e9\u20ac"`},
		{"surrogate pair", "😀", `"\ud83d\ude00"`},
		{"cut-off sequence", "\xe2\x82", `"\ufffd\ufffd"`},
		{"unchecked continuation", "\xc3\x00", `"\u00c0"`},
		{"overlong", "\xc0\xaf", `"\ufffd"`},
		{"bad lead byte", "\xff", `"\ufffd"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, string(AppendQuoted(nil, tc.in)))
		})
	}
}
