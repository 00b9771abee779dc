//go:build !linux

package barex

// hostLocation is "cpu:0" where NUMA placement cannot be queried.
func hostLocation(uint64) string { return "cpu:0" }
