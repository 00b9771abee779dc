// Package numa says which NUMA node holds a page of this process's
// memory, as Mooncake's getMemoryLocation does for host memory: the rdma
// and barex transports name memory registered as "*" by it ("cpu:<node>").
// It is pure Go (move_pages(2) through syscall), owns nothing and starts
// nothing.
package numa
