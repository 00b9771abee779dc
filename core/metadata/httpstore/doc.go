// Package httpstore implements metadata.Store over Mooncake's HTTP metadata
// protocol (protocol.md §3.3), as Mooncake's libcurl client does: the URL is
// the full connection string, then "?key=" and the key escaped like
// curl_easy_escape; GET reads the value, PUT sends it with Content-Type
// application/json, DELETE removes it. Only HTTP 200 is success.
//
// It talks to Mooncake's Python server, to Mooncake Store's master, and to
// our own core/metadata/httpserver alike. Each request is bounded by
// Config.Timeout (3000 ms) and each connect by Config.ConnectTimeout
// (1500 ms), as Mooncake; connections are kept alive and reused.
//
// Ownership: New creates an HTTP client with its own connection pool; Close
// drops the idle connections and makes later calls fail with ErrClosed.
//
// Errors: a 404 on GET matches metadata.ErrNotFound; a 404 on DELETE is
// success (the key is gone either way). Other statuses are a *StatusError
// carrying the method, key, status code and the start of the body. Deadlines
// surface as context.DeadlineExceeded.
package httpstore
