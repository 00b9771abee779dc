// Package submit holds the start of a Submit that the hardware transports
// (rdma, barex) share: naming the target (Target), cutting tasks into
// parts and starting them with their count before any part is posted
// (Parts; transports.md R12, R21), and one Call per Submit, which tracks
// the call's context and its unfinished parts so that the watch that
// purges queued parts when the context ends is released with the last of
// them.
//
// The package starts no goroutine: Call.Watch registers a callback with
// context.AfterFunc, which runs on the context's own goroutine, at most
// once, and never after the last part has finished and released it.
package submit
