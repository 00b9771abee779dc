// Package topology finds this host's RDMA NICs (HCAs), GPUs and NUMA nodes
// and builds Mooncake's NIC priority matrix from them (transports.md §3):
// for every memory location ("cpu:<node>", "cuda:<ordinal>") the HCAs that
// are preferred and those that are merely available.
//
// Discovery reads sysfs through an fs.FS (os.DirFS("/") in production,
// fstest.MapFS fixtures in tests), so it needs no libibverbs: HCAs come from
// /sys/class/infiniband, their PCI function and NUMA node from the resolved
// symlinks, their usability from the port state files and the uverbs device
// node. GPUs come from a GPUInfo (the NVML-backed one lives in
// topology/nvmlgpu; tests use fakes). The JSON form of the matrix is
// Mooncake's, so Mooncake peers read it and MC_CUSTOM_TOPO_JSON files work
// unchanged.
//
// Unlike Mooncake, the HCA order is deterministic: HCAs are sorted by name,
// and a device's index (its position in a descriptor's devices[] and in every
// buffer's key arrays) is its position in that order. A peer's matrix is
// resolved through the peer's own devices[] (Resolve), never through the
// iteration order of a map (Mooncake pitfall R16).
//
// Nothing here holds resources; there is nothing to close. Errors matching
// ErrUnavailable mean a GPU library is absent (conclusive); ErrMalformed
// means a matrix JSON could not be used; ErrNoDevice means a location has no
// device to select.
package topology
