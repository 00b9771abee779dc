package httpserver

import "errors"

var (
	// ErrConfig is matched by every invalid-configuration error from New.
	ErrConfig = errors.New("httpserver: invalid config")
	// ErrPersistFile is matched when the persistence file cannot be read or
	// decoded at start.
	ErrPersistFile = errors.New("httpserver: bad persist file")
)
