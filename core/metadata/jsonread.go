package metadata

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// reader takes a JSON document apart token by token. Keys match exactly, as in
// jsoncpp (encoding/json's struct decoding would also accept "NAME" for
// "name"). Nesting is only entered where the expected shape says so; values
// kept raw go through encoding/json, whose scanner limits nesting depth, so
// hostile input costs at most time and memory linear in its size.
type reader struct {
	dec *json.Decoder
}

func newReader(data []byte) *reader {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return &reader{dec: dec}
}

// malformed returns an error matching ErrMalformed with the given detail.
func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func (r *reader) token() (json.Token, error) {
	tok, err := r.dec.Token()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, malformed("unexpected end of input")
		}
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return tok, nil
}

// tokenKind names a token's JSON type for error messages.
func tokenKind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "object"
		}
		if v == '[' {
			return "array"
		}
		return fmt.Sprintf("%q", rune(v))
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "bool"
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", tok)
	}
}

// open consumes the opening delimiter of an object ('{') or array ('['). A
// JSON null is accepted as an absent (empty) container: null is true then and
// there is nothing to close.
func (r *reader) open(delim json.Delim) (null bool, err error) {
	tok, err := r.token()
	if err != nil {
		return false, err
	}
	if tok == nil {
		return true, nil
	}
	if d, ok := tok.(json.Delim); ok && d == delim {
		return false, nil
	}
	want := "object"
	if delim == '[' {
		want = "array"
	}
	return false, malformed("want %s, got %s", want, tokenKind(tok))
}

// more reports whether the current object or array has another element.
func (r *reader) more() bool { return r.dec.More() }

// close consumes the closing delimiter of the current object or array.
func (r *reader) close() error {
	tok, err := r.token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
		return nil
	}
	return malformed("want end of container, got %s", tokenKind(tok))
}

// key reads the next object key.
func (r *reader) key() (string, error) {
	tok, err := r.token()
	if err != nil {
		return "", err
	}
	k, ok := tok.(string)
	if !ok {
		return "", malformed("want object key, got %s", tokenKind(tok))
	}
	return k, nil
}

// str reads a string value; null reads as "" (jsoncpp's asString).
func (r *reader) str() (string, error) {
	tok, err := r.token()
	if err != nil {
		return "", err
	}
	switch v := tok.(type) {
	case string:
		return v, nil
	case nil:
		return "", nil
	default:
		return "", malformed("want string, got %s", tokenKind(tok))
	}
}

// uint reads a non-negative integer no larger than limit; null reads as 0
// (jsoncpp's asInt/asUInt64 on null). Strings, booleans, negative numbers,
// fractions and exponents are errors: the value never passes through float64.
func (r *reader) uint(limit uint64) (uint64, error) {
	tok, err := r.token()
	if err != nil {
		return 0, err
	}
	switch v := tok.(type) {
	case json.Number:
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return 0, malformed("want unsigned integer, got %.40s", v)
		}
		if n > limit {
			return 0, malformed("%d is out of range (max %d)", n, limit)
		}
		return n, nil
	case nil:
		return 0, nil
	default:
		return 0, malformed("want unsigned integer, got %s", tokenKind(tok))
	}
}

// raw reads the next value whole and returns it compacted.
func (r *reader) raw() (json.RawMessage, error) {
	var raw json.RawMessage
	if err := r.dec.Decode(&raw); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, malformed("unexpected end of input")
		}
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return compactJSON(raw)
}

// skip reads the next value and discards it.
func (r *reader) skip() error {
	var raw json.RawMessage
	if err := r.dec.Decode(&raw); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

// end checks that only whitespace follows the document.
func (r *reader) end() error {
	tok, err := r.dec.Token()
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: after document: %w", ErrMalformed, err)
	}
	return malformed("trailing %s after document", tokenKind(tok))
}
