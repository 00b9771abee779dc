package metadata

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// Protocols pymooncake speaks. Descriptors of other protocols are refused
// with ErrUnsupportedProtocol.
const (
	ProtocolTCP   = "tcp"
	ProtocolRDMA  = "rdma"
	ProtocolBarex = "barex"
)

// MaxDescriptorSize bounds the input DecodeSegmentDesc and DecodeRPCMeta
// accept: HEAD's largest handshake frame (MC_HANDSHAKE_MAX_LENGTH ≤ 128 MiB).
const MaxDescriptorSize = 128 << 20

// BufferDesc is one registered memory region of a segment.
type BufferDesc struct {
	// Name is, for tcp, the segment name (Mooncake's TcpTransport writes its
	// server name there); for rdma and barex, the memory location: "cpu:0",
	// "cuda:0", or "*" when unknown.
	Name string
	// Addr is the region's start address in the owner's address space.
	Addr uint64
	// Length is the region's size in bytes.
	Length uint64
	// RKey and LKey are the region's remote and local keys, one per device for
	// rdma (in Devices order), one per barex mempool MR for barex. They are
	// written only for rdma and barex descriptors.
	RKey []uint32
	LKey []uint32
}

// DeviceDesc is one NIC of an rdma or barex segment.
type DeviceDesc struct {
	// Name is the ibverbs device name, e.g. "mlx5_0".
	Name string
	// LID is the port's local identifier (0 on RoCE and for barex).
	LID uint16
	// GID is the 16-byte GID as lower-case hex pairs joined by ':', or
	// "ignore" for barex.
	GID string
}

// PriorityEntry is one location's NIC preference in the priority matrix. Its
// JSON form is [[preferred...],[available...]].
type PriorityEntry struct {
	Preferred []string
	Available []string
}

// SegmentDesc is Mooncake's segment descriptor (protocol.md §2), the JSON a
// segment publishes under its metadata key or serves over the handshake.
type SegmentDesc struct {
	// Name is the segment (server) name. Peers use it, not the name they
	// opened, to find the segment's endpoints.
	Name string
	// Protocol is ProtocolTCP, ProtocolRDMA or ProtocolBarex.
	Protocol string
	// TCPDataPort is the TCP data listener's port; 0 for other protocols.
	TCPDataPort int
	// TCPProtoVersion is the TCP framing the segment accepts. A decoded
	// descriptor without the key (a pre-v0.3.12 peer) reads as 1. Marshal
	// writes the value as given (tcp engines set 2).
	TCPProtoVersion int
	// Timestamp is informational. Marshal writes Timestamp(time.Now()) when
	// it is empty.
	Timestamp string
	// Buffers are the registered memory regions.
	Buffers []BufferDesc
	// Devices are the NICs of an rdma or barex segment; not written for tcp.
	Devices []DeviceDesc
	// PriorityMatrix maps a location to its NIC preference (rdma and barex).
	// A decoded descriptor whose matrix cannot be parsed has none, as in
	// Mooncake, where that is only a warning.
	PriorityMatrix map[string]PriorityEntry
	// RDMAServerName is HEAD's dual-NIC name. It is written when non-empty,
	// and also (empty) whenever TCPDataHost is set, as Mooncake 0.3.13 does.
	RDMAServerName string
	// TCPDataHost is the host a peer connects its data sockets to (Mooncake
	// 0.3.13+); empty means the host of Name. Written only when non-empty.
	TCPDataHost string
	// Extra holds top-level keys of a decoded descriptor that pymooncake does
	// not interpret, as compact JSON. Marshal writes them back among the
	// known keys in sorted order; a key that is also a known field is an
	// error.
	Extra map[string]json.RawMessage
}

// knownKeys are the top-level keys DecodeSegmentDesc interprets; they never
// appear in Extra.
var knownKeys = map[string]bool{
	"name": true, "protocol": true, "tcp_data_port": true, "tcp_proto_version": true,
	"timestamp": true, "rdma_server_name": true, "tcp_data_host": true, "buffers": true, "devices": true,
	"priority_matrix": true,
}

// Timestamp formats t as Mooncake's getCurrentDateTime does: local time,
// "%Y-%m-%d %H:%M:%S" and six digits of microseconds.
func Timestamp(t time.Time) string {
	return t.Local().Format("2006-01-02 15:04:05.000000")
}

// Clone returns a deep copy of d; nil for nil.
func (d *SegmentDesc) Clone() *SegmentDesc {
	if d == nil {
		return nil
	}
	c := *d
	c.Buffers = slices.Clone(d.Buffers)
	for i := range c.Buffers {
		c.Buffers[i].RKey = slices.Clone(c.Buffers[i].RKey)
		c.Buffers[i].LKey = slices.Clone(c.Buffers[i].LKey)
	}
	c.Devices = slices.Clone(d.Devices)
	if d.PriorityMatrix != nil {
		c.PriorityMatrix = make(map[string]PriorityEntry, len(d.PriorityMatrix))
		for k, e := range d.PriorityMatrix {
			c.PriorityMatrix[k] = PriorityEntry{
				Preferred: slices.Clone(e.Preferred),
				Available: slices.Clone(e.Available),
			}
		}
	}
	if d.Extra != nil {
		c.Extra = make(map[string]json.RawMessage, len(d.Extra))
		for k, v := range d.Extra {
			c.Extra[k] = slices.Clone(v)
		}
	}
	return &c
}

// validate applies Mooncake's decoder rules (HEAD) for d's protocol, plus
// bounds that keep later arithmetic safe, so that Marshal never writes what
// DecodeSegmentDesc or a Mooncake peer would refuse.
func (d *SegmentDesc) validate() error {
	switch d.Protocol {
	case ProtocolTCP, ProtocolRDMA, ProtocolBarex:
	default:
		return fmt.Errorf("%w %q", ErrUnsupportedProtocol, d.Protocol)
	}
	if d.TCPDataPort < 0 || d.TCPDataPort > math.MaxUint16 {
		return malformed("tcp_data_port %d out of range", d.TCPDataPort)
	}
	if d.TCPProtoVersion < 0 || d.TCPProtoVersion > math.MaxInt32 {
		return malformed("tcp_proto_version %d out of range", d.TCPProtoVersion)
	}
	for i, b := range d.Buffers {
		if b.Name == "" || b.Addr == 0 || b.Length == 0 {
			return malformed("buffer %d: name, addr and length must be non-empty (name %q addr %#x length %d)",
				i, b.Name, b.Addr, b.Length)
		}
		if b.Addr+b.Length < b.Addr {
			return malformed("buffer %d: addr %#x + length %d overflows", i, b.Addr, b.Length)
		}
	}
	if d.Protocol == ProtocolTCP {
		return nil
	}
	for i, dev := range d.Devices {
		if dev.Name == "" || dev.GID == "" {
			return malformed("device %d: name and gid must be non-empty", i)
		}
	}
	// rdma indexes a buffer's keys by device, so it needs one per device;
	// barex hands the whole key set to its peer. An empty key set is allowed
	// (HEAD; PR required keys).
	for i, b := range d.Buffers {
		if len(b.RKey) == 0 {
			continue
		}
		if len(b.RKey) != len(b.LKey) {
			return malformed("buffer %d: %d rkeys but %d lkeys", i, len(b.RKey), len(b.LKey))
		}
		if d.Protocol == ProtocolRDMA && len(b.RKey) != len(d.Devices) {
			return malformed("buffer %d: %d keys for %d devices", i, len(b.RKey), len(d.Devices))
		}
	}
	return nil
}

// Marshal encodes d exactly as Mooncake's encodeSegmentDesc and jsoncpp do:
// keys sorted, compact, integers as integers. newline selects FastWriter's
// form (a trailing '\n': etcd values, handshake messages); without it the
// result is the HTTP PUT body. tcp descriptors carry no devices, keys or
// priority matrix. An unsupported protocol is an error matching
// ErrUnsupportedProtocol; a descriptor that DecodeSegmentDesc would refuse,
// or an Extra key that is invalid JSON or shadows a field, matches
// ErrMalformed.
func (d *SegmentDesc) Marshal(newline bool) ([]byte, error) {
	if d == nil {
		return nil, fmt.Errorf("encode segment descriptor: %w: nil descriptor", ErrMalformed)
	}
	if err := d.validate(); err != nil {
		return nil, fmt.Errorf("encode segment descriptor %q: %w", d.Name, err)
	}
	ts := d.Timestamp
	if ts == "" {
		ts = Timestamp(time.Now())
	}
	top := []member{
		{"name", quoted(d.Name)},
		{"protocol", quoted(d.Protocol)},
		{"tcp_data_port", intJSON(d.TCPDataPort)},
		{"tcp_proto_version", intJSON(d.TCPProtoVersion)},
		{"timestamp", quoted(ts)},
	}
	if d.RDMAServerName != "" || d.TCPDataHost != "" {
		top = append(top, member{"rdma_server_name", quoted(d.RDMAServerName)})
	}
	if d.TCPDataHost != "" {
		top = append(top, member{"tcp_data_host", quoted(d.TCPDataHost)})
	}
	withKeys := d.Protocol != ProtocolTCP
	buffers := make([][]byte, len(d.Buffers))
	for i, b := range d.Buffers {
		fields := []member{
			{"name", quoted(b.Name)},
			{"addr", uintJSON(b.Addr)},
			{"length", uintJSON(b.Length)},
		}
		if withKeys {
			fields = append(fields, member{"rkey", uint32Array(b.RKey)}, member{"lkey", uint32Array(b.LKey)})
		}
		buffers[i] = appendObject(nil, fields)
	}
	top = append(top, member{"buffers", appendArray(nil, buffers)})
	if withKeys {
		devices := make([][]byte, len(d.Devices))
		for i, dev := range d.Devices {
			devices[i] = appendObject(nil, []member{
				{"name", quoted(dev.Name)},
				{"lid", uintJSON(uint64(dev.LID))},
				{"gid", quoted(dev.GID)},
			})
		}
		top = append(top, member{"devices", appendArray(nil, devices)})
		top = append(top, member{"priority_matrix", priorityMatrixJSON(d.PriorityMatrix)})
	}
	for _, k := range slices.Sorted(maps.Keys(d.Extra)) {
		if knownKeys[k] {
			return nil, fmt.Errorf("encode segment descriptor %q: %w: extra key %q is a descriptor field",
				d.Name, ErrMalformed, k)
		}
		v, err := compactJSON(d.Extra[k])
		if err != nil {
			return nil, fmt.Errorf("encode segment descriptor %q: extra key %q: %w", d.Name, k, err)
		}
		top = append(top, member{k, v})
	}
	out := appendObject(nil, top)
	if newline {
		out = append(out, '\n')
	}
	return out, nil
}

// priorityMatrixJSON writes Topology::toJson's form. An empty matrix is a
// jsoncpp null value, written as null.
func priorityMatrixJSON(m map[string]PriorityEntry) []byte {
	if len(m) == 0 {
		return []byte("null")
	}
	entries := make([]member, 0, len(m))
	for loc, e := range m {
		entries = append(entries, member{loc, appendArray(nil, [][]byte{stringArray(e.Preferred), stringArray(e.Available)})})
	}
	return appendObject(nil, entries)
}
