//go:build cgo && linux

package barex

/*
#cgo CFLAGS: -I${SRCDIR}/shim
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include "mc_barex_shim.h"

// Trampolines: cgo cannot call a C function pointer, so each shim function
// is called through one of these, with the pointer dlsym returned. A
// failing call fetches the shim's detail text in the same C call, on the
// same thread (mcbx_last_error is per thread), as a malloc'd copy the Go
// side frees.

static char *mcw_detail(void *le) {
	char tmp[512];
	tmp[0] = 0;
	if (!le)
		return NULL;
	((int (*)(char *, size_t))le)(tmp, sizeof tmp);
	return tmp[0] ? strdup(tmp) : NULL;
}

#define MCW_DETAIL(rc) do { if ((rc) < 0 && detail) *detail = mcw_detail(le); } while (0)

static int mcw_abi_version(void *f) { return ((int (*)(void))f)(); }

static int mcw_open(void *f, void *le, char **detail, const mcbx_config *cfg, mcbx_engine **out, int32_t *port) {
	int rc = ((int (*)(const mcbx_config *, mcbx_engine **, int32_t *))f)(cfg, out, port);
	MCW_DETAIL(rc);
	return rc;
}

static int mcw_devices(void *f, void *le, char **detail, mcbx_engine *e, mcbx_device *out, int32_t cap) {
	int rc = ((int (*)(mcbx_engine *, mcbx_device *, int32_t))f)(e, out, cap);
	MCW_DETAIL(rc);
	return rc;
}

static int mcw_reg_mr(void *f, void *le, char **detail, mcbx_engine *e, uint64_t addr, uint64_t len, int32_t mt,
		      int32_t gpu, mcbx_key *keys, int32_t cap, int32_t *n) {
	int rc = ((int (*)(mcbx_engine *, uint64_t, uint64_t, int32_t, int32_t, mcbx_key *, int32_t, int32_t *))f)(
	    e, addr, len, mt, gpu, keys, cap, n);
	MCW_DETAIL(rc);
	return rc;
}

static int mcw_dereg_mr(void *f, void *le, char **detail, mcbx_engine *e, uint64_t addr, int32_t mt) {
	int rc = ((int (*)(mcbx_engine *, uint64_t, int32_t))f)(e, addr, mt);
	MCW_DETAIL(rc);
	return rc;
}

static int mcw_connect(void *f, void *le, char **detail, mcbx_engine *e, const char *host, int32_t port,
		       int32_t nic, int32_t timeout_ms, mcbx_chan *ch, int32_t *lnic, int32_t *pnic) {
	int rc = ((int (*)(mcbx_engine *, const char *, int32_t, int32_t, int32_t, mcbx_chan *, int32_t *, int32_t *))f)(
	    e, host, port, nic, timeout_ms, ch, lnic, pnic);
	MCW_DETAIL(rc);
	return rc;
}

static int mcw_chan_active(void *f, void *le, char **detail, mcbx_engine *e, mcbx_chan ch) {
	int rc = ((int (*)(mcbx_engine *, mcbx_chan))f)(e, ch);
	MCW_DETAIL(rc);
	return rc;
}

static int mcw_chan_close(void *f, void *le, char **detail, mcbx_engine *e, mcbx_chan ch, int32_t timeout_ms) {
	int rc = ((int (*)(mcbx_engine *, mcbx_chan, int32_t))f)(e, ch, timeout_ms);
	MCW_DETAIL(rc);
	return rc;
}

static int mcw_post(void *f, void *le, char **detail, mcbx_engine *e, mcbx_chan ch, int32_t op, const mcbx_sge *v,
		    int32_t n, uint64_t cookie) {
	int rc = ((int (*)(mcbx_engine *, mcbx_chan, int32_t, const mcbx_sge *, int32_t, uint64_t))f)(e, ch, op, v, n, cookie);
	MCW_DETAIL(rc);
	return rc;
}

static int mcw_poll(void *f, mcbx_engine *e, mcbx_done *out, int32_t cap) {
	return ((int (*)(mcbx_engine *, mcbx_done *, int32_t))f)(e, out, cap);
}

static int mcw_event_fd(void *f, mcbx_engine *e) { return ((int (*)(mcbx_engine *))f)(e); }

static int mcw_close_engine(void *f, void *le, char **detail, mcbx_engine *e, int32_t timeout_ms) {
	int rc = ((int (*)(mcbx_engine *, int32_t))f)(e, timeout_ms);
	MCW_DETAIL(rc);
	return rc;
}

static int64_t mcw_test_control(void *f, mcbx_engine *e, const char *key, int64_t arg) {
	return ((int64_t (*)(mcbx_engine *, const char *, int64_t))f)(e, key, arg);
}

// mcw_self_path is the file of the object this code was linked into: the
// Python extension, or the executable.
static const char *mcw_self_path(void) {
	Dl_info info;
	if (dladdr((void *)&mcw_self_path, &info) && info.dli_fname)
		return info.dli_fname;
	return NULL;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/internal/dl"
	"github.com/pymooncake/pymooncake/core/transport"
)

// sge and done must be laid out as mcbx_sge and mcbx_done: each line fails
// to compile when a size or an offset differs.
var (
	_ = [1]struct{}{}[unsafe.Sizeof(sge{})-unsafe.Sizeof(C.mcbx_sge{})]
	_ = [1]struct{}{}[unsafe.Sizeof(C.mcbx_sge{})-unsafe.Sizeof(sge{})]
	_ = [1]struct{}{}[unsafe.Offsetof(sge{}.raddr)-unsafe.Offsetof(C.mcbx_sge{}.raddr)]
	_ = [1]struct{}{}[unsafe.Offsetof(sge{}.length)-unsafe.Offsetof(C.mcbx_sge{}.len)]
	_ = [1]struct{}{}[unsafe.Offsetof(sge{}.lkey)-unsafe.Offsetof(C.mcbx_sge{}.lkey)]
	_ = [1]struct{}{}[unsafe.Offsetof(sge{}.rkey)-unsafe.Offsetof(C.mcbx_sge{}.rkey)]
	_ = [1]struct{}{}[unsafe.Offsetof(sge{}.memType)-unsafe.Offsetof(C.mcbx_sge{}.mem_type)]
	_ = [1]struct{}{}[unsafe.Offsetof(sge{}.deviceID)-unsafe.Offsetof(C.mcbx_sge{}.device_id)]
	_ = [1]struct{}{}[unsafe.Sizeof(done{})-unsafe.Sizeof(C.mcbx_done{})]
	_ = [1]struct{}{}[unsafe.Sizeof(C.mcbx_done{})-unsafe.Sizeof(done{})]
	_ = [1]struct{}{}[unsafe.Offsetof(done{}.status)-unsafe.Offsetof(C.mcbx_done{}.status)]
)

// abiVersion is the shim ABI this build speaks.
const abiVersion = C.MCBX_ABI_VERSION

// selfPath is the file holding this code, for the loader's search.
func selfPath() string {
	if p := C.mcw_self_path(); p != nil {
		return C.GoString(p)
	}
	return ""
}

// shimLib is one reference to a loaded shim and its function table.
type shimLib struct {
	lib  *dl.Library
	path string

	abi, lastErr, open, devices, regMR, deregMR, connect, active, chanClose, post, poll, eventFD, closeEngine unsafe.Pointer
	// control is mcbx_test_control, which only fakes export.
	control unsafe.Pointer
}

// loadShim opens the first shim of shimCandidates(explicit, ...) that
// exists. An absent shim is an error matching ErrUnavailable that names
// every path tried with dlerror's text; a shim that lacks a symbol or
// speaks another ABI version is an error that does not.
func loadShim(explicit string) (*shimLib, error) {
	cands := shimCandidates(explicit, selfPath())
	var errs []error
	for _, path := range cands {
		lib, err := dl.Open(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s, err := bindShim(lib, path)
		if err != nil {
			lib.Close()
			return nil, err
		}
		return s, nil
	}
	return nil, fmt.Errorf("barex: load the barex shim %s (searched %s): %w", ShimName, strings.Join(cands, ", "), errors.Join(errs...))
}

func bindShim(lib *dl.Library, path string) (*shimLib, error) {
	s := &shimLib{lib: lib, path: path}
	for _, f := range []struct {
		name string
		dst  *unsafe.Pointer
	}{
		{"mcbx_abi_version", &s.abi}, {"mcbx_last_error", &s.lastErr}, {"mcbx_open", &s.open},
		{"mcbx_devices", &s.devices}, {"mcbx_reg_mr", &s.regMR}, {"mcbx_dereg_mr", &s.deregMR},
		{"mcbx_connect", &s.connect}, {"mcbx_chan_active", &s.active}, {"mcbx_chan_close", &s.chanClose},
		{"mcbx_post", &s.post}, {"mcbx_poll", &s.poll}, {"mcbx_event_fd", &s.eventFD},
		{"mcbx_close_engine", &s.closeEngine},
	} {
		p, err := lib.Sym(f.name)
		if err != nil {
			return nil, fmt.Errorf("barex: shim %s: %w", path, err)
		}
		*f.dst = p
	}
	if p, err := lib.Sym("mcbx_test_control"); err == nil {
		s.control = p
	}
	if v := int(C.mcw_abi_version(s.abi)); v != abiVersion {
		return nil, fmt.Errorf("barex: shim %s speaks abi %d, this build %d: %w", path, v, abiVersion, ErrABIVersion)
	}
	return s, nil
}

func (s *shimLib) close() error { return s.lib.Close() }

// testControl calls the fake shim's mcbx_test_control (e may be nil for
// process-wide counters). ok is false when the shim is not a fake.
func (s *shimLib) testControl(e *shimEngine, key string, arg int64) (v int64, ok bool) {
	if s.control == nil {
		return 0, false
	}
	ckey := C.CString(key)
	defer C.free(unsafe.Pointer(ckey))
	var ce *C.mcbx_engine
	if e != nil {
		ce = e.e
	}
	return int64(C.mcw_test_control(s.control, ce, ckey, C.int64_t(arg))), true
}

func shimErr(op string, rc C.int, detail *C.char) error {
	e := &ShimError{Op: op, Code: Code(rc)}
	if detail != nil {
		e.Detail = C.GoString(detail)
		C.free(unsafe.Pointer(detail))
	}
	return e
}

// shimEngine is an mcbx_engine: the real native implementation.
type shimEngine struct {
	lib    *shimLib
	e      *C.mcbx_engine
	port   int
	efd    int
	closed atomic.Bool
}

var _ native = (*shimEngine)(nil)

// openNative loads the shim (see loadShim) and starts an engine.
func openNative(shimPath string, cfg nativeConfig) (native, error) {
	lib, err := loadShim(shimPath)
	if err != nil {
		return nil, err
	}
	e, err := lib.openEngine(cfg)
	if err != nil {
		lib.close()
		return nil, err
	}
	return e, nil
}

func (s *shimLib) openEngine(cfg nativeConfig) (*shimEngine, error) {
	var c C.mcbx_config
	c.struct_size = C.uint32_t(unsafe.Sizeof(c))
	if cfg.useNICs != "" {
		c.use_nics = C.CString(cfg.useNICs)
		defer C.free(unsafe.Pointer(c.use_nics))
	}
	c.port_min, c.port_max = C.int32_t(cfg.minPort), C.int32_t(cfg.maxPort)
	c.connect_timeout_ms = C.int32_t(cfg.connectTimeout.Milliseconds())
	var (
		e      *C.mcbx_engine
		port   C.int32_t
		detail *C.char
	)
	if rc := C.mcw_open(s.open, s.lastErr, &detail, &c, &e, &port); rc < 0 {
		err := shimErr("mcbx_open", rc, detail)
		if Code(rc) == CodeNoDevice {
			return nil, fmt.Errorf("barex: shim %s: %w: %w", s.path, ErrNoDevices, err)
		}
		return nil, fmt.Errorf("barex: shim %s: %w", s.path, err)
	}
	efd := int(C.mcw_event_fd(s.eventFD, e))
	if efd < 0 {
		C.mcw_close_engine(s.closeEngine, nil, nil, e, 0)
		return nil, fmt.Errorf("barex: shim %s: mcbx_event_fd: %w", s.path, Code(efd))
	}
	return &shimEngine{lib: s, e: e, port: int(port), efd: efd}, nil
}

func (e *shimEngine) Port() int    { return e.port }
func (e *shimEngine) EventFD() int { return e.efd }

func (e *shimEngine) Devices() ([]nativeDevice, error) {
	if e.closed.Load() {
		return nil, CodeClosed
	}
	var detail *C.char
	buf := make([]C.mcbx_device, 64)
	n := C.mcw_devices(e.lib.devices, e.lib.lastErr, &detail, e.e, &buf[0], C.int32_t(len(buf)))
	if n < 0 {
		return nil, shimErr("mcbx_devices", n, detail)
	}
	if int(n) > len(buf) {
		buf = make([]C.mcbx_device, n)
		if n = C.mcw_devices(e.lib.devices, e.lib.lastErr, &detail, e.e, &buf[0], C.int32_t(len(buf))); n < 0 {
			return nil, shimErr("mcbx_devices", n, detail)
		}
	}
	out := make([]nativeDevice, 0, n)
	for _, d := range buf[:min(int(n), len(buf))] {
		out = append(out, nativeDevice{
			name:  C.GoStringN(&d.name[0], C.int(cstrlen(d.name[:]))),
			nic:   int(d.barex_id),
			ctxOK: d.ctx_ok != 0,
		})
	}
	return out, nil
}

// cstrlen is the length of a NUL-terminated name in a fixed array (all of
// it when the shim forgot the NUL).
func cstrlen(b []C.char) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}

func memType(gpu bool) C.int32_t {
	if gpu {
		return C.MCBX_MEM_GPU
	}
	return C.MCBX_MEM_CPU
}

func (e *shimEngine) RegMR(addr, length uint64, gpu bool, gpuID int) ([]nativeKey, error) {
	if e.closed.Load() {
		return nil, CodeClosed
	}
	var (
		detail *C.char
		n      C.int32_t
	)
	keys := make([]C.mcbx_key, 64)
	rc := C.mcw_reg_mr(e.lib.regMR, e.lib.lastErr, &detail, e.e, C.uint64_t(addr), C.uint64_t(length), memType(gpu),
		C.int32_t(gpuID), &keys[0], C.int32_t(len(keys)), &n)
	if rc < 0 {
		return nil, shimErr("mcbx_reg_mr", rc, detail)
	}
	if n < 0 || int(n) > len(keys) {
		return nil, &ShimError{Op: "mcbx_reg_mr", Code: CodeInvalid, Detail: fmt.Sprintf("reported %d keys for room for %d", n, len(keys))}
	}
	out := make([]nativeKey, n)
	for i, k := range keys[:n] {
		out[i] = nativeKey{nic: int(k.nic_id), lkey: uint32(k.lkey), rkey: uint32(k.rkey)}
	}
	return out, nil
}

func (e *shimEngine) DeregMR(addr uint64, gpu bool) error {
	if e.closed.Load() {
		return CodeClosed
	}
	var detail *C.char
	if rc := C.mcw_dereg_mr(e.lib.deregMR, e.lib.lastErr, &detail, e.e, C.uint64_t(addr), memType(gpu)); rc < 0 {
		return shimErr("mcbx_dereg_mr", rc, detail)
	}
	return nil
}

// millis is d in whole milliseconds, at least 1.
func millis(d time.Duration) C.int32_t {
	ms := d.Milliseconds()
	switch {
	case ms < 1:
		return 1
	case ms > 1<<31-1:
		return 1<<31 - 1
	}
	return C.int32_t(ms)
}

func (e *shimEngine) Connect(host string, port, localNIC int, timeout time.Duration) (nativeChannel, error) {
	if e.closed.Load() {
		return nativeChannel{}, CodeClosed
	}
	chost := C.CString(host)
	defer C.free(unsafe.Pointer(chost))
	var (
		detail     *C.char
		ch         C.mcbx_chan
		lnic, pnic C.int32_t
	)
	rc := C.mcw_connect(e.lib.connect, e.lib.lastErr, &detail, e.e, chost, C.int32_t(port), C.int32_t(localNIC),
		millis(timeout), &ch, &lnic, &pnic)
	if rc < 0 {
		return nativeChannel{}, shimErr("mcbx_connect", rc, detail)
	}
	return nativeChannel{handle: uint64(ch), localNIC: int(lnic), peerNIC: int(pnic)}, nil
}

func (e *shimEngine) Active(ch uint64) (bool, error) {
	if e.closed.Load() {
		return false, CodeClosed
	}
	var detail *C.char
	rc := C.mcw_chan_active(e.lib.active, e.lib.lastErr, &detail, e.e, C.mcbx_chan(ch))
	if rc < 0 {
		return false, shimErr("mcbx_chan_active", rc, detail)
	}
	return rc == 1, nil
}

func (e *shimEngine) CloseChannel(ch uint64, timeout time.Duration) error {
	if e.closed.Load() {
		return CodeClosed
	}
	var detail *C.char
	if rc := C.mcw_chan_close(e.lib.chanClose, e.lib.lastErr, &detail, e.e, C.mcbx_chan(ch), millis(timeout)); rc < 0 {
		return shimErr("mcbx_chan_close", rc, detail)
	}
	return nil
}

func (e *shimEngine) Post(ch uint64, op transport.Opcode, v []sge, cookie uint64) error {
	if e.closed.Load() {
		return CodeClosed
	}
	if len(v) == 0 || len(v) > 1<<31-1 {
		return &ShimError{Op: "mcbx_post", Code: CodeInvalid, Detail: fmt.Sprintf("%d elements", len(v))}
	}
	cop := C.int32_t(C.MCBX_OP_WRITE)
	if op == transport.Read {
		cop = C.MCBX_OP_READ
	}
	var detail *C.char
	rc := C.mcw_post(e.lib.post, e.lib.lastErr, &detail, e.e, C.mcbx_chan(ch), cop,
		(*C.mcbx_sge)(unsafe.Pointer(&v[0])), C.int32_t(len(v)), C.uint64_t(cookie))
	if rc < 0 {
		return shimErr("mcbx_post", rc, detail)
	}
	return nil
}

func (e *shimEngine) Poll(out []done) int {
	if e.closed.Load() || len(out) == 0 {
		return 0
	}
	n := int(C.mcw_poll(e.lib.poll, e.e, (*C.mcbx_done)(unsafe.Pointer(&out[0])), C.int32_t(len(out))))
	if n < 0 || n > len(out) {
		return 0
	}
	return n
}

func (e *shimEngine) Close(timeout time.Duration) error {
	if e.closed.Swap(true) {
		return nil
	}
	var detail *C.char
	var err error
	if rc := C.mcw_close_engine(e.lib.closeEngine, e.lib.lastErr, &detail, e.e, millis(timeout)); rc < 0 {
		err = shimErr("mcbx_close_engine", rc, detail)
	}
	e.e = nil
	return errors.Join(err, e.lib.close())
}
