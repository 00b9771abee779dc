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
// order on a goroutine each, so that gates, CopyAsync and events are tested
// against work queued before and after them. The Driver owns those
// goroutines; Close stops them.
//
// IPC (gpu.IPC) is FAKE too: each fake driver of a test process stands for
// one process of a host, and device UUIDs depend on the ordinal (SetUUIDs
// renumbers them), so two drivers see the same GPUs. Alloc's memory
// exports a legacy handle that names it in a process-wide registry, and
// cannot be opened by the driver that exported it (as a real process
// cannot open its own handles); AllocVMM's shareable memory exports a
// duplicate of its file descriptor; its private memory cannot be exported.
// OpenIPC maps the same pages in the importing driver, where copies reach
// them and nothing else does: a copy naming another driver's device memory
// directly fails. Opening a legacy handle twice in one driver returns the
// same mapping, counted, as in one CUDA context. LiveIPC counts mappings
// and events not closed; Close reports them as leaks.
package fake
