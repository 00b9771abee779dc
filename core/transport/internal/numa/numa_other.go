//go:build !linux

package numa

// Node is never known where move_pages(2) does not exist.
func Node(uint64) (node int, ok bool) { return 0, false }
