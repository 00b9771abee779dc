package httpstore

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/pymooncake/pymooncake/core/metadata"
)

var (
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("httpstore: store closed")
	// ErrConfig is matched by every invalid-configuration error from New.
	ErrConfig = errors.New("httpstore: invalid config")
	// ErrTooLarge means a response body exceeded Config.MaxResponse.
	ErrTooLarge = errors.New("httpstore: response too large")
)

// StatusError is an answer other than HTTP 200.
type StatusError struct {
	Method string // GET, PUT or DELETE
	Key    string // the metadata key, unescaped
	Code   int    // HTTP status code
	Body   string // the start of the response body
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("httpstore: %s %q: http status %d: %q", e.Method, e.Key, e.Code, e.Body)
}

// Unwrap makes a 404 on GET match metadata.ErrNotFound.
func (e *StatusError) Unwrap() error {
	if e.Method == http.MethodGet && e.Code == http.StatusNotFound {
		return metadata.ErrNotFound
	}
	return nil
}
