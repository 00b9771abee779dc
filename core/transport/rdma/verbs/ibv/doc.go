// Package ibv is the real verbs.Provider: libibverbs loaded at run time
// through core/internal/dl (dlopen of libibverbs.so.1 with
// RTLD_NOW|RTLD_LOCAL), so that building or importing pymooncake needs no
// rdma-core. It is the only cgo over libibverbs.
//
// The few types and functions used are declared in mcv_verbs.h, written for
// this package with an mcv_ prefix; layout_test.go checks them field by
// field against the system's <infiniband/verbs.h> wherever that header is
// installed. Functions are called through a table of dlsym'd pointers;
// ibv_post_send, ibv_poll_cq and ibv_req_notify_cq, which are inline in the
// header, are called through the context's ops table as the inlines do.
// Optional verbs (_ibv_query_gid_ex, ibv_reg_mr_iova2, ibv_reg_dmabuf_mr) are
// looked up by name and reported as verbs.ErrNotSupported when absent.
//
// Crossings: a batch of work requests is posted with one cgo call, which
// builds the chain in C memory owned by the QP; a batch of up to 64
// completions is polled with one call into a caller's Go array. C never
// keeps a Go pointer.
//
// Waiting: completion channels and the async event fd are made
// non-blocking and waited on through Go's netpoller (a dup of the fd), so a
// wait honours its context and Close wakes it without a thread blocked in C.
//
// Lifetime: Open takes a reference on the library; Provider.Close releases
// it (the library is unloaded with the last reference). Close every object
// before its Provider. Without cgo, Open fails with an error matching
// verbs.ErrUnavailable that says so.
package ibv
