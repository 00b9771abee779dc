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
// Ownership: New binds the listener, opens Config.PersistFile if set, and
// serves in goroutines that the Server owns; Close shuts them down
// gracefully and must be called.
//
// Reads are answered from memory and never wait for a disk write. Writes
// go through one committer goroutine, which takes every PUT and DELETE
// waiting and decides them in order (duplicate rpc_meta, missing key) as
// Mooncake's server would one by one. With a PersistFile it then writes
// them in one bbolt transaction (group commit: concurrent writes share the
// fsyncs; a lone write does not wait for company), and only then updates
// the map and replies. So a 200 means the change is on disk: after kill -9,
// or a power loss on a disk that honours fsync, the file opens at its last
// commit, holding every acknowledged change; GETs never see a change
// before it is on disk. A commit costs the pages it touches, not the size
// of the store; store.go describes the layout. A JSON persist file from
// earlier versions is migrated at open.
//
// A commit that fails is answered 500 "metadata not persisted" and leaves
// the map unchanged; since the file's state is then unknown (the failed
// commit may still reach the disk), every later change is refused with the
// same 500 until the server is restarted, while reads go on. With a
// PersistFile, keys longer than bbolt's 32 KiB limit get 414, and a second
// server on the same file fails to start (the file is locked).
package httpserver
