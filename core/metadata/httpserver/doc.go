// Package httpserver is pymooncake's own HTTP metadata server, a drop-in for
// Mooncake's `mooncake_http_metadata_server` (protocol.md §3.3): one route,
// /metadata, with the key in the `key` query parameter and raw bytes as
// values.
//
//	GET    200 with the stored bytes, or 404 "metadata not found"
//	PUT    200 "metadata updated"; 400 "Duplicate rpc_meta key not allowed"
//	       when the key contains "rpc_meta" and already exists
//	DELETE 200 "metadata deleted", or 404 "metadata not found"
//	other  405 "Method not allowed"
//
// The key is stripped of surrounding white space and an empty key is a 400,
// as Mooncake's newer server. Bodies larger than Config.MaxBody get 413.
//
// Ownership: New binds the listener, loads Config.PersistFile if set, and
// serves in a goroutine that the Server owns; Close shuts it down gracefully
// and must be called. With a PersistFile every change is written to it
// atomically (temporary file, fsync, rename) before the reply; a change that
// cannot be written is undone and answered with 500. The whole store is
// rewritten per change, which suits the few keys per engine that Mooncake
// keeps there.
package httpserver
