//go:build linux

package ibv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// checked lists, per structure, the fields whose offsets must match the
// real header (mcv name, ibv name). Structures pymooncake allocates are
// also checked for size.
var checked = []struct {
	mcv, ibv string
	size     bool
	fields   []string // same name on both sides unless "mcv=ibv"
}{
	{"struct mcv_context", "struct ibv_context", false, []string{"device", "ops", "cmd_fd", "async_fd", "num_comp_vectors"}},
	{"struct mcv_context_ops", "struct ibv_context_ops", true, []string{"poll_cq", "req_notify_cq", "post_send", "alloc_mw=alloc_mw", "post_recv"}},
	{"struct mcv_device_attr", "struct ibv_device_attr", true, []string{"max_mr_size", "max_qp", "max_qp_wr", "max_sge", "max_cq",
		"max_cqe", "max_mr", "max_qp_rd_atom", "max_qp_init_rd_atom", "atomic_cap", "max_pkeys", "phys_port_cnt"}},
	{"struct mcv_port_attr", "struct ibv_port_attr", true, []string{"state", "max_mtu", "active_mtu", "gid_tbl_len", "lid",
		"link_layer", "flags", "port_cap_flags2"}},
	{"union mcv_gid", "union ibv_gid", true, nil},
	{"struct mcv_gid_entry", "struct ibv_gid_entry", true, []string{"gid", "gid_index", "port_num", "gid_type", "ndev_ifindex"}},
	{"struct mcv_pd", "struct ibv_pd", false, []string{"context", "handle"}},
	{"struct mcv_mr", "struct ibv_mr", false, []string{"context", "pd", "addr", "length", "handle", "lkey", "rkey"}},
	{"struct mcv_comp_channel", "struct ibv_comp_channel", true, []string{"context", "fd", "refcnt"}},
	{"struct mcv_cq", "struct ibv_cq", false, []string{"context", "channel", "cq_context", "handle", "cqe"}},
	{"struct mcv_qp", "struct ibv_qp", false, []string{"context", "qp_context", "pd", "send_cq", "recv_cq", "srq", "handle",
		"qp_num", "state", "qp_type"}},
	{"struct mcv_qp_cap", "struct ibv_qp_cap", true, []string{"max_send_wr", "max_recv_wr", "max_send_sge", "max_recv_sge", "max_inline_data"}},
	{"struct mcv_qp_init_attr", "struct ibv_qp_init_attr", true, []string{"qp_context", "send_cq", "recv_cq", "srq", "cap", "qp_type", "sq_sig_all"}},
	{"struct mcv_global_route", "struct ibv_global_route", true, []string{"dgid", "flow_label", "sgid_index", "hop_limit", "traffic_class"}},
	{"struct mcv_ah_attr", "struct ibv_ah_attr", true, []string{"grh", "dlid", "sl", "src_path_bits", "static_rate", "is_global", "port_num"}},
	{"struct mcv_qp_attr", "struct ibv_qp_attr", true, []string{"qp_state", "cur_qp_state", "path_mtu", "path_mig_state", "qkey",
		"rq_psn", "sq_psn", "dest_qp_num", "qp_access_flags", "cap", "ah_attr", "alt_ah_attr", "pkey_index", "alt_pkey_index",
		"en_sqd_async_notify", "sq_draining", "max_rd_atomic", "max_dest_rd_atomic", "min_rnr_timer", "port_num", "timeout",
		"retry_cnt", "rnr_retry", "alt_port_num", "alt_timeout", "rate_limit"}},
	{"struct mcv_sge", "struct ibv_sge", true, []string{"addr", "length", "lkey"}},
	{"struct mcv_send_wr", "struct ibv_send_wr", true, []string{"wr_id", "next", "sg_list", "num_sge", "opcode", "send_flags",
		"imm_data", "wr.rdma.remote_addr", "wr.rdma.rkey", "qp_type", "u.bind_mw=bind_mw", "u.tso.mss=tso.mss"}},
	{"struct mcv_wc", "struct ibv_wc", true, []string{"wr_id", "status", "opcode", "vendor_err", "byte_len", "imm_data", "qp_num",
		"src_qp", "wc_flags", "pkey_index", "slid", "sl", "dlid_path_bits"}},
	{"struct mcv_async_event", "struct ibv_async_event", true, []string{"element", "element.qp", "element.port_num", "event_type"}},
}

// TestLayoutMatchesRDMACore compiles mcv_verbs.h next to rdma-core's
// <infiniband/verbs.h> and checks every declared field's offset, and the
// size of every structure pymooncake allocates. It needs the real header
// (Debian's libibverbs-dev), which building does not: it skips without it.
func TestLayoutMatchesRDMACore(t *testing.T) {
	if _, err := os.Stat("/usr/include/infiniband/verbs.h"); err != nil {
		t.Skip("no /usr/include/infiniband/verbs.h (libibverbs-dev): nothing to compare against")
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		t.Skipf("no C compiler %q", cc)
	}
	here, err := filepath.Abs("mcv_verbs.h")
	require.NoError(t, err)
	var b strings.Builder
	fmt.Fprintf(&b, "#include <stddef.h>\n#include <infiniband/verbs.h>\n#include %q\n", here)
	n := 0
	for _, s := range checked {
		if s.size {
			fmt.Fprintf(&b, "_Static_assert(sizeof(%s) == sizeof(%s), \"size of %s\");\n", s.mcv, s.ibv, s.ibv)
			n++
		}
		for _, f := range s.fields {
			mf, rf, ok := strings.Cut(f, "=")
			if !ok {
				rf = mf
			}
			fmt.Fprintf(&b, "_Static_assert(offsetof(%s, %s) == offsetof(%s, %s), \"%s.%s\");\n", s.mcv, mf, s.ibv, rf, s.ibv, rf)
			n++
		}
	}
	b.WriteString("int main(void) { return 0; }\n")
	dir := t.TempDir()
	src := filepath.Join(dir, "layout.c")
	require.NoError(t, os.WriteFile(src, []byte(b.String()), 0o600))
	out, err := exec.Command(cc, "-fsyntax-only", "-Wall", src).CombinedOutput()
	require.NoError(t, err, "layouts differ:\n%s", out)
	t.Logf("%d layout checks against the system's verbs.h passed", n)
}

// TestFlatLayouts pins the Go side of the flat arrays; mcv_wrap.h asserts
// the same offsets for the C side.
func TestFlatLayouts(t *testing.T) {
	var w verbs.SendWR
	require.Equal(t, uintptr(40), unsafe.Sizeof(w))
	require.Equal(t, uintptr(24), unsafe.Offsetof(w.Length))
	require.Equal(t, uintptr(36), unsafe.Offsetof(w.Opcode))
	var c verbs.WC
	require.Equal(t, uintptr(32), unsafe.Sizeof(c))
	require.Equal(t, uintptr(8), unsafe.Offsetof(c.Status))
	require.Equal(t, uintptr(24), unsafe.Offsetof(c.QPNum))
}
