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
)

// handler serves Path over an in-memory map, optionally persisted.
type handler struct {
	log     *zap.Logger
	maxBody int64
	persist string // file path, or "" for none

	mu   sync.RWMutex
	data map[string][]byte // guarded by mu
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
		h.delete(w, key)
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
	h.mu.Lock()
	defer h.mu.Unlock()
	old, existed := h.data[key]
	if existed && strings.Contains(key, "rpc_meta") {
		reply(w, http.StatusBadRequest, msgDuplicate)
		return
	}
	h.data[key] = body
	if err := h.save(); err != nil {
		if existed {
			h.data[key] = old
		} else {
			delete(h.data, key)
		}
		h.log.Error("persist metadata put", zap.String("key", key), zap.Error(err))
		reply(w, http.StatusInternalServerError, msgPersist)
		return
	}
	reply(w, http.StatusOK, msgUpdated)
}

func (h *handler) delete(w http.ResponseWriter, key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.data[key]
	if !ok {
		reply(w, http.StatusNotFound, msgNotFound)
		return
	}
	delete(h.data, key)
	if err := h.save(); err != nil {
		h.data[key] = old
		h.log.Error("persist metadata delete", zap.String("key", key), zap.Error(err))
		reply(w, http.StatusInternalServerError, msgPersist)
		return
	}
	reply(w, http.StatusOK, msgDeleted)
}

// save writes the whole map to the persist file, if any. Caller holds mu.
func (h *handler) save() error {
	if h.persist == "" {
		return nil
	}
	return writeSnapshot(h.persist, h.data)
}

// reply writes a short text answer. Mooncake's server labels every answer
// application/json, whatever it holds; so do we.
func reply(w http.ResponseWriter, code int, text string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(text)))
	w.WriteHeader(code)
	_, _ = io.WriteString(w, text)
}
