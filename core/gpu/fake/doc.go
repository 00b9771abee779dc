// Package fake is a FAKE GPU driver for tests: it implements gpu.Driver
// without a GPU, so that the engine's and the TCP transport's handling of
// GPU memory is tested where there is none (CI). It proves nothing about
// real hardware; core/gpu/cuda is tested on an NVIDIA host for that.
//
// Fake device memory is a file mapping seen at two addresses: the "device
// address" handed out by Alloc is mapped PROT_NONE, so any direct access by
// the code under test faults (as a real device pointer would), and a
// private read-write view that only the fake's copies, Read and Write use.
//
// The fake is strict where a real GPU is forgiving, to catch misuse
// deterministically:
//   - copies run lazily, when a Wait needs them, in queue order: a buffer
//     reused before its copy was waited for shows the wrong bytes, and data
//     that was never waited for never arrives;
//   - a copier accepts only device memory of its own device and host
//     memory from AllocHost;
//   - FailCopiesAfter injects a copy failure;
//   - Close reports copiers, host memory and gates that were never
//     released (ErrLeak).
//
// Streams (NewStream, Launch, Synchronize) run "kernels" (Go functions) in
// order on a goroutine each, so that gates are tested against work queued
// before and after them. The Driver owns those goroutines; Close stops them.
package fake
