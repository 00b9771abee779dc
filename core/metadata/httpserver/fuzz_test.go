package httpserver

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"go.uber.org/zap"
)

const fuzzMaxBody = 256

// request runs one request through h and returns the status and body.
func request(h http.Handler, method, rawQuery string, body []byte) (int, []byte) {
	req := httptest.NewRequest(http.MethodGet, "/metadata", bytes.NewReader(body))
	req.Method = method
	req.URL.RawQuery = rawQuery
	req.RequestURI = ""
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

// FuzzServerKeys feeds random raw queries, bodies and methods to the handler.
// It checks that every answer is one the protocol allows (never a 500 from
// a recovered panic), and that a stored value reads back byte for byte,
// deletes, and is gone, under the same raw query.
func FuzzServerKeys(f *testing.F) {
	for _, seed := range []struct {
		method, query string
		body          []byte
	}{
		{"PUT", "key=mooncake%2Fram%2F1.2.3.4%3A5", []byte(`{"a":1}`)},
		{"PUT", "key=mooncake%2Frpc_meta%2Fh%3A1", []byte(`{"rpc_port":1}`)},
		{"PUT", "key=%20a%20", nil},
		{"PUT", "key=", []byte("x")},
		{"PUT", "key=%zz&key=b", []byte("x")},
		{"PUT", "a=1;key=b", []byte("x")},
		{"PUT", "key=big", bytes.Repeat([]byte("x"), fuzzMaxBody+1)},
		{"GET", "key=a+b", nil},
		{"DELETE", "key=%00", nil},
		{"POST", "key=a", []byte("x")},
		{"", "key=a", nil},
	} {
		f.Add(seed.method, seed.query, seed.body)
	}
	f.Fuzz(func(t *testing.T, method, rawQuery string, body []byte) {
		h, err := newHandler(Config{MaxBody: fuzzMaxBody}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := h.close(); err != nil {
				t.Fatal(err)
			}
		}()
		code, reply := request(h, method, rawQuery, body)
		switch method {
		case http.MethodGet, http.MethodDelete:
			requireOneOf(t, code, reply, 404, msgNotFound, 400, msgNoKey)
			return
		case http.MethodPut:
		default:
			requireOneOf(t, code, reply, 405, msgMethod, 400, msgNoKey)
			return
		}
		if len(body) > fuzzMaxBody {
			requireOneOf(t, code, reply, 413, msgTooLarge, 400, msgNoKey)
			return
		}
		requireOneOf(t, code, reply, 200, msgUpdated, 400, msgNoKey)
		if code != 200 {
			return
		}
		code, got := request(h, http.MethodGet, rawQuery, nil)
		if code != 200 || !bytes.Equal(got, body) {
			t.Fatalf("get after put: %d %q, want 200 %q", code, got, body)
		}
		// A second PUT is refused exactly for rpc_meta keys; the key may
		// come from any "key" parameter, so accept either answer here and
		// check that a refusal left the value alone.
		code, reply = request(h, http.MethodPut, rawQuery, []byte("second"))
		requireOneOf(t, code, reply, 200, msgUpdated, 400, msgDuplicate)
		if code == 400 {
			if q, _ := url.ParseQuery(rawQuery); !bytes.Contains([]byte(q.Get("key")), []byte("rpc_meta")) {
				t.Fatalf("duplicate refused for key %q without rpc_meta", q.Get("key"))
			}
			if _, got := request(h, http.MethodGet, rawQuery, nil); !bytes.Equal(got, body) {
				t.Fatalf("refused put changed the value to %q", got)
			}
		}
		code, reply = request(h, http.MethodDelete, rawQuery, nil)
		requireOneOf(t, code, reply, 200, msgDeleted)
		code, reply = request(h, http.MethodGet, rawQuery, nil)
		requireOneOf(t, code, reply, 404, msgNotFound)
		if n := h.keys(); n != 0 {
			t.Fatalf("store not empty after delete: %d keys", n)
		}
	})
}

// requireOneOf fails unless (code, body) is one of the (code, text) pairs.
func requireOneOf(t *testing.T, code int, body []byte, pairs ...any) {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		if code == pairs[i].(int) && string(body) == pairs[i+1].(string) {
			return
		}
	}
	t.Fatalf("unexpected answer %d %q; allowed %v", code, body, pairs)
}
