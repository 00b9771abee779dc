// Package nvmlgpu is the topology.GPUInfo of hosts with NVIDIA GPUs: it
// lists GPUs through NVML (github.com/NVIDIA/go-nvml) and numbers them by
// CUDA ordinal, because Mooncake names GPU memory "cuda:<ordinal>".
//
// NVML is loaded only when GPUs is called, and unloaded before it returns;
// importing this package needs no NVML, and linking it leaves no NVML
// symbol for the dynamic loader: go-nvml's C calls land on the trampolines
// of internal/nvmlsym, which GPUs binds to the library for the duration of
// the call (so the extension loads under RTLD_NOW). When libnvidia-ml
// cannot be opened the error matches topology.ErrUnavailable and keeps
// dlerror's text (the library is opened through core/internal/dl first,
// because go-nvml's Init reports only ERROR_LIBRARY_NOT_FOUND). Only
// linux/amd64 and linux/arm64 builds with cgo use NVML.
//
// NVML enumerates GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES and
// CUDA_DEVICE_ORDER; CUDA honours both (transports.md §3.5). GPUs
// reproduces CUDA's numbering from the two values the caller passes in
// Options (the package reads no environment):
//
//   - the enumeration is PCI bus order. That is CUDA's order under
//     CUDA_DEVICE_ORDER=PCI_BUS_ID, and under the default FASTEST_FIRST on
//     every host whose GPUs are all the same model. With mixed models under
//     FASTEST_FIRST CUDA may order differently; GPUs then logs a warning
//     (set CUDA_DEVICE_ORDER=PCI_BUS_ID to be exact).
//   - CUDA_VISIBLE_DEVICES selects and reorders: each entry is an index
//     into that enumeration or a "GPU-<uuid prefix>"; as in CUDA, parsing
//     stops at the first entry that is invalid, unknown, ambiguous or
//     repeated, and a set but empty value hides every GPU. MIG entries are
//     not supported and end the list.
package nvmlgpu
