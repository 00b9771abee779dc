package metadata

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pymooncake/pymooncake/core/internal/jsoncpp"
)

// This file writes JSON the way jsoncpp 1.9 does for the values Mooncake
// builds: objects are std::maps (keys in byte order), output is compact, and
// strings are escaped by valueToQuotedStringN with emitUTF8 off.

// member is one key of a JSON object and its already encoded value.
type member struct {
	key   string
	value []byte
}

// appendObject writes members as a compact JSON object with keys in sorted
// (byte) order, the order of jsoncpp's std::map. Keys must be unique.
func appendObject(buf []byte, members []member) []byte {
	slices.SortFunc(members, func(a, b member) int { return strings.Compare(a.key, b.key) })
	buf = append(buf, '{')
	for i, m := range members {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendQuoted(buf, m.key)
		buf = append(buf, ':')
		buf = append(buf, m.value...)
	}
	return append(buf, '}')
}

// appendQuoted writes s as a JSON string with jsoncpp's escaping.
func appendQuoted(buf []byte, s string) []byte { return jsoncpp.AppendQuoted(buf, s) }

func quoted(s string) []byte { return appendQuoted(nil, s) }

func uintJSON(v uint64) []byte { return strconv.AppendUint(nil, v, 10) }

func intJSON(v int) []byte { return strconv.AppendInt(nil, int64(v), 10) }

// uint32Array writes a JSON array of unsigned integers; nil writes [].
func uint32Array(vs []uint32) []byte {
	buf := []byte{'['}
	for i, v := range vs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = strconv.AppendUint(buf, uint64(v), 10)
	}
	return append(buf, ']')
}

// stringArray writes a JSON array of strings; nil writes [].
func stringArray(vs []string) []byte {
	buf := []byte{'['}
	for i, v := range vs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendQuoted(buf, v)
	}
	return append(buf, ']')
}

// appendArray writes already encoded values as a JSON array.
func appendArray(buf []byte, values [][]byte) []byte {
	buf = append(buf, '[')
	for i, v := range values {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, v...)
	}
	return append(buf, ']')
}

// compactJSON checks that raw is exactly one JSON value and returns it
// without insignificant whitespace.
func compactJSON(raw []byte) ([]byte, error) {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return buf.Bytes(), nil
}
