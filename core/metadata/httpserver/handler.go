package httpserver

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"go.uber.org/zap"
)

// Reply texts, as Mooncake's Python server.
const (
	msgNotFound  = "metadata not found"
	msgUpdated   = "metadata updated"
	msgDeleted   = "metadata deleted"
	msgDuplicate = "Duplicate rpc_meta key not allowed"
	msgMethod    = "Method not allowed"
	msgNoKey     = "Missing key parameter"
	msgTooLarge  = "metadata too large"
	msgPersist   = "metadata not persisted"
	// Not Mooncake's: its server neither persists nor shuts down mid-request.
	msgKeyTooLong = "key too long"
	msgStopping   = "metadata server stopping"
)

// handler serves Path from an in-memory map. Writes go through one
// committer goroutine (commit.go), which persists them when a store is set;
// reads take the map's lock only for the lookup.
type handler struct {
	log     *zap.Logger
	maxBody int64
	maxKey  int    // longest key a PUT may store; 0 for no limit
	store   *store // nil: memory only

	mu   sync.RWMutex
	data map[string][]byte // guarded by mu; written only by the committer

	ops     chan *op      // to the committer
	cancel  func()        // stops the committer
	stopped chan struct{} // closed when the committer has returned
	// failed is set (by the committer only) after a commit failed: the
	// file's state is then unknown, and every later change is refused.
	failed error
}

// isSpace is Python's str.isspace, which Mooncake's server strips keys with:
// Unicode white space plus the ASCII separators 0x1c-0x1f.
func isSpace(r rune) bool {
	return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f)
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			h.log.Error("panic serving metadata request; dropping it",
				zap.Any("panic", p), zap.String("remote", r.RemoteAddr), zap.String("method", r.Method))
			reply(w, http.StatusInternalServerError, "internal error")
		}
	}()
	if r.URL.Path != Path {
		reply(w, http.StatusNotFound, "404 page not found")
		return
	}
	key := strings.TrimFunc(r.URL.Query().Get("key"), isSpace)
	if key == "" {
		reply(w, http.StatusBadRequest, msgNoKey)
		return
	}
	switch r.Method {
	case http.MethodGet:
		h.get(w, key)
	case http.MethodPut:
		h.put(w, r, key)
	case http.MethodDelete:
		h.delete(w, r, key)
	default:
		w.Header().Set("Allow", "GET, PUT, DELETE")
		reply(w, http.StatusMethodNotAllowed, msgMethod)
	}
}

func (h *handler) get(w http.ResponseWriter, key string) {
	h.mu.RLock()
	value, ok := h.data[key]
	h.mu.RUnlock()
	if !ok {
		reply(w, http.StatusNotFound, msgNotFound)
		return
	}
	// Stored values are never modified in place, so writing outside the
	// lock is safe.
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(value)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(value)
}

func (h *handler) put(w http.ResponseWriter, r *http.Request, key string) {
	if r.ContentLength > h.maxBody {
		reply(w, http.StatusRequestEntityTooLarge, msgTooLarge)
		return
	}
	if h.maxKey > 0 && len(key) > h.maxKey {
		reply(w, http.StatusRequestURITooLong, msgKeyTooLong)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			reply(w, http.StatusRequestEntityTooLarge, msgTooLarge)
			return
		}
		reply(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	if body == nil {
		body = []byte{} // nil means deleted to the committer
	}
	h.submit(w, r, &op{key: key, value: body})
}

func (h *handler) delete(w http.ResponseWriter, r *http.Request, key string) {
	h.submit(w, r, &op{key: key, deleted: true})
}

// submit hands o to the committer and replies with its outcome. If the
// client goes away first, the change may still be applied, as with any
// request whose answer is lost.
func (h *handler) submit(w http.ResponseWriter, r *http.Request, o *op) {
	o.done = make(chan result, 1)
	select {
	case h.ops <- o:
	case <-h.stopped:
		reply(w, http.StatusServiceUnavailable, msgStopping)
		return
	case <-r.Context().Done():
		return
	}
	var res result
	select {
	case res = <-o.done:
	case <-h.stopped:
		select {
		case res = <-o.done: // answered just before stopping
		default:
			reply(w, http.StatusServiceUnavailable, msgStopping)
			return
		}
	case <-r.Context().Done():
		return
	}
	reply(w, res.code, res.text)
}

// reply writes a short text answer. Mooncake's server labels every answer
// application/json, whatever it holds; so do we.
func reply(w http.ResponseWriter, code int, text string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(text)))
	w.WriteHeader(code)
	_, _ = io.WriteString(w, text)
}
