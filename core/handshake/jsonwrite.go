package handshake

import (
	"strconv"

	"github.com/pymooncake/pymooncake/core/internal/jsoncpp"
)

// This file writes JSON the way jsoncpp 1.9.5's Json::FastWriter does, which
// is what Mooncake sends on the handshake socket: objects with their keys in
// byte order (the callers below list them sorted), no spaces, and a newline
// after the value. Only what the message types of this package need is here.

// object builds one JSON object whose keys the caller adds in sorted order.
type object struct {
	buf   []byte
	first bool
}

func newObject() *object { return &object{buf: append(make([]byte, 0, 128), '{'), first: true} }

func (o *object) key(k string) {
	if !o.first {
		o.buf = append(o.buf, ',')
	}
	o.first = false
	o.buf = appendQuoted(o.buf, k)
	o.buf = append(o.buf, ':')
}

func (o *object) str(k, v string) {
	o.key(k)
	o.buf = appendQuoted(o.buf, v)
}

func (o *object) uint(k string, v uint64) {
	o.key(k)
	o.buf = strconv.AppendUint(o.buf, v, 10)
}

func (o *object) int(k string, v int64) {
	o.key(k)
	o.buf = strconv.AppendInt(o.buf, v, 10)
}

func (o *object) uints32(k string, vs []uint32) {
	o.key(k)
	o.buf = append(o.buf, '[')
	for i, v := range vs {
		if i > 0 {
			o.buf = append(o.buf, ',')
		}
		o.buf = strconv.AppendUint(o.buf, uint64(v), 10)
	}
	o.buf = append(o.buf, ']')
}

// done closes the object and adds FastWriter's trailing newline.
func (o *object) done() []byte { return append(o.buf, '}', '\n') }

func appendQuoted(dst []byte, s string) []byte { return jsoncpp.AppendQuoted(dst, s) }
