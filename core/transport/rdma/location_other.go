//go:build !linux

package rdma

// memoryLocation is "*" where NUMA placement cannot be queried.
func memoryLocation(uint64) string { return "*" }
