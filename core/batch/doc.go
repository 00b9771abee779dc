// Package batch keeps the engine's batches: sets of tasks submitted
// together, named by validated generation-stamped ids (never pointers,
// unlike Mooncake's), with the completion state polling reads without a
// lock (two atomic loads; Mooncake lost half its throughput to a global
// lock here, issue #1303).
//
// A Batch also carries what the engine's policy needs once it has been
// submitted: its deadline and target segment (asynchronous batches, which
// time out and are recovered on failure) and the notify to send when it
// completes. An unknown, freed or forged id is ErrUnknownBatch.
package batch
