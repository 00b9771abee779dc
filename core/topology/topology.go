package topology

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// Wildcard is the location of memory whose placement is unknown. It
// resolves to every device, all preferred, as in Mooncake.
const Wildcard = "*"

// Port is one port of an HCA as sysfs shows it.
type Port struct {
	// Num is the port number (1-based).
	Num int
	// State is the state's name from ports/<n>/state, e.g. "ACTIVE".
	State string
	// Active is true when the state is 4 (ACTIVE).
	Active bool
	// LinkLayer is ports/<n>/link_layer: "InfiniBand" or "Ethernet".
	LinkLayer string
}

// HCA is one RDMA device.
type HCA struct {
	// Name is the ibverbs device name, e.g. "mlx5_0".
	Name string
	// PCIBusID is the PCI function, e.g. "0000:3b:00.0" (empty for HCAs
	// from a custom topology file).
	PCIBusID string
	// NUMANode is the PCI function's NUMA node, -1 when unknown.
	NUMANode int
	// PCIPath is the resolved sysfs directory of the PCI function, relative
	// to the fs root, e.g. "sys/devices/pci0000:00/0000:00:01.0/0000:3b:00.0".
	PCIPath string
	// Ports are the device's ports in number order.
	Ports []Port
	// UVerbs is the uverbs character device's name, e.g. "uverbs0".
	UVerbs string
}

// GPU is one GPU as a GPUInfo reports it.
type GPU struct {
	// Ordinal is the CUDA device ordinal: the N of "cuda:N".
	Ordinal int
	// BusID is the PCI function in sysfs form, "0000:3b:00.0" (see
	// NormalizeBusID).
	BusID string
	// NUMANode is the GPU's NUMA node, -1 when unknown.
	NUMANode int
}

// GPUInfo lists the GPUs of this host by CUDA ordinal. An implementation
// whose library is absent returns an error matching ErrUnavailable.
type GPUInfo interface {
	GPUs() ([]GPU, error)
}

// Skipped is an HCA that discovery found but left out, and why.
type Skipped struct {
	Name   string
	Reason string
}

// Topology is this host's devices and NIC priority matrix.
type Topology struct {
	// HCAs are the usable RDMA devices sorted by name; a device's index in
	// this slice is its device id everywhere (devices[], key arrays).
	HCAs []HCA
	// Skipped are the HCAs discovery left out (no active port, no uverbs
	// device node, not in the filter), for logging.
	Skipped []Skipped
	// GPUs are the GPUs found, by CUDA ordinal.
	GPUs []GPU
	// NUMANodes are the CPU NUMA node numbers, ascending.
	NUMANodes []int
	// Matrix maps each location to its preferred and available HCAs.
	Matrix map[string]metadata.PriorityEntry
	// PeerMem is true when nvidia-peermem is loaded, so GPU memory can be
	// registered with ibv_reg_mr directly; otherwise it needs dma-buf.
	PeerMem bool
}

// HCANames returns the HCA names in device-id order.
func (t *Topology) HCANames() []string {
	out := make([]string, len(t.HCAs))
	for i, h := range t.HCAs {
		out[i] = h.Name
	}
	return out
}

// Index returns the device id of the HCA called name, or -1.
func (t *Topology) Index(name string) int {
	for i, h := range t.HCAs {
		if h.Name == name {
			return i
		}
	}
	return -1
}

// Resolved is the matrix resolved through the device-id order.
func (t *Topology) Resolved() *Resolved { return Resolve(t.HCANames(), t.Matrix) }

// Without returns a copy of t that lacks the named HCAs, in the matrix as
// well as in the device list (device ids are renumbered: use it only before
// any id is published, e.g. for devices that failed to open at start).
func (t *Topology) Without(names ...string) *Topology {
	drop := func(n string) bool { return slices.Contains(names, n) }
	c := *t
	c.HCAs = slices.DeleteFunc(slices.Clone(t.HCAs), func(h HCA) bool { return drop(h.Name) })
	c.Matrix = make(map[string]metadata.PriorityEntry, len(t.Matrix))
	for loc, e := range t.Matrix {
		c.Matrix[loc] = metadata.PriorityEntry{
			Preferred: slices.DeleteFunc(slices.Clone(e.Preferred), drop),
			Available: slices.DeleteFunc(slices.Clone(e.Available), drop),
		}
	}
	return &c
}

// MatrixJSON encodes a priority matrix as Mooncake does: an object keyed by
// location (sorted, as jsoncpp writes maps), each value
// [[preferred...],[available...]], compact. Empty lists are [].
func MatrixJSON(m map[string]metadata.PriorityEntry) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, loc := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteByte(',')
		}
		e := m[loc]
		k, err := json.Marshal(loc)
		if err != nil {
			return nil, fmt.Errorf("encode priority matrix key %q: %w", loc, err)
		}
		b.Write(k)
		b.WriteString(":[")
		for j, list := range [][]string{e.Preferred, e.Available} {
			if j > 0 {
				b.WriteByte(',')
			}
			if list == nil {
				list = []string{}
			}
			v, err := json.Marshal(list)
			if err != nil {
				return nil, fmt.Errorf("encode priority matrix entry %q: %w", loc, err)
			}
			b.Write(v)
		}
		b.WriteByte(']')
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// JSON is the topology's priority matrix in Mooncake's form: what
// get_local_topology returns and what a descriptor's priority_matrix holds.
func (t *Topology) JSON() ([]byte, error) { return MatrixJSON(t.Matrix) }

// ParseMatrix decodes a priority matrix as Mooncake's Topology::parse does:
// an object whose every value is a two-element array of device-name arrays.
// It is stricter where Mooncake would silently coerce: names must be
// non-empty strings, and nothing may follow the object. Errors match
// ErrMalformed.
func ParseMatrix(data []byte) (map[string]metadata.PriorityEntry, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%w: empty document", ErrMalformed)
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the object", ErrMalformed)
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: not an object", ErrMalformed)
	}
	m := make(map[string]metadata.PriorityEntry, len(raw))
	for loc, v := range raw {
		var lists [][]string
		if err := json.Unmarshal(v, &lists); err != nil || len(lists) != 2 {
			return nil, fmt.Errorf("%w: entry %q is not [[preferred...],[available...]]", ErrMalformed, loc)
		}
		for _, list := range lists {
			for _, n := range list {
				if n == "" {
					return nil, fmt.Errorf("%w: entry %q names an empty device", ErrMalformed, loc)
				}
			}
		}
		m[loc] = metadata.PriorityEntry{Preferred: nonNil(lists[0]), Available: nonNil(lists[1])}
	}
	return m, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Parse builds a topology from a priority matrix JSON alone (Mooncake's
// parse): the HCAs are the distinct names in the matrix, sorted, with no
// sysfs details.
func Parse(data []byte) (*Topology, error) {
	m, err := ParseMatrix(data)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range m {
		for _, n := range slices.Concat(e.Preferred, e.Available) {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	t := &Topology{Matrix: m}
	for _, n := range names {
		t.HCAs = append(t.HCAs, HCA{Name: n, NUMANode: -1})
	}
	for loc := range m {
		if n, ok := strings.CutPrefix(loc, "cpu:"); ok {
			if id, err := strconv.Atoi(n); err == nil && !slices.Contains(t.NUMANodes, id) {
				t.NUMANodes = append(t.NUMANodes, id)
			}
		}
	}
	slices.Sort(t.NUMANodes)
	return t, nil
}

// LoadCustom reads the topology file named by MC_CUSTOM_TOPO_JSON.
func LoadCustom(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read custom topology %q: %w", path, err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("custom topology %q: %w", path, err)
	}
	return t, nil
}

// Resolved is a priority matrix with device names turned into indices of a
// device list: a local topology's HCAs, or a peer descriptor's devices[].
// It is immutable.
type Resolved struct {
	devices []string
	entries map[string]resolvedEntry
	all     resolvedEntry
}

type resolvedEntry struct {
	preferred, available []int
}

// Resolve indexes matrix through devices. Names that are not in devices are
// dropped (a peer may list a NIC it did not publish); a device listed twice
// in one entry counts once. The wildcard entry prefers every device.
func Resolve(devices []string, matrix map[string]metadata.PriorityEntry) *Resolved {
	index := make(map[string]int, len(devices))
	for i, d := range devices {
		if _, dup := index[d]; !dup {
			index[d] = i
		}
	}
	r := &Resolved{devices: slices.Clone(devices), entries: make(map[string]resolvedEntry, len(matrix))}
	for i := range devices {
		r.all.preferred = append(r.all.preferred, i)
	}
	for loc, e := range matrix {
		var re resolvedEntry
		seen := map[int]bool{}
		for _, n := range e.Preferred {
			if i, ok := index[n]; ok && !seen[i] {
				seen[i] = true
				re.preferred = append(re.preferred, i)
			}
		}
		for _, n := range e.Available {
			if i, ok := index[n]; ok && !seen[i] {
				seen[i] = true
				re.available = append(re.available, i)
			}
		}
		r.entries[loc] = re
	}
	return r
}

// Devices is the number of devices the matrix was resolved through.
func (r *Resolved) Devices() int { return len(r.devices) }

// Device returns the name of device i.
func (r *Resolved) Device(i int) string { return r.devices[i] }

// Candidates returns how many devices location can select from: the size
// of the preferred and available lists together.
func (r *Resolved) Candidates(location string) int {
	e := r.entry(location)
	return len(e.preferred) + len(e.available)
}

func (r *Resolved) entry(location string) resolvedEntry {
	if e, ok := r.entries[location]; ok && len(e.preferred)+len(e.available) > 0 {
		return e
	}
	return r.all
}

// Select picks a device for memory at location, as Mooncake's
// selectDevice does. A location without a usable entry falls back to the
// wildcard. On retry 0 it picks pick modulo the preferred list (or the
// available list when nothing is preferred): the caller passes a random or
// round-robin number. On retry k > 0 it rotates deterministically through
// preferred then available: index (k-1) mod (len(preferred)+len(available)).
// With hint >= 0 and retry 0, the hinted device is chosen when it is in
// either list (rail affinity). No candidate at all is ErrNoDevice.
func (r *Resolved) Select(location string, retry int, pick uint64, hint int) (int, error) {
	e := r.entry(location)
	n := len(e.preferred) + len(e.available)
	if n == 0 {
		return -1, fmt.Errorf("select device for %q: %w", location, ErrNoDevice)
	}
	if retry <= 0 {
		if hint >= 0 && (slices.Contains(e.preferred, hint) || slices.Contains(e.available, hint)) {
			return hint, nil
		}
		if len(e.preferred) > 0 {
			return e.preferred[pick%uint64(len(e.preferred))], nil
		}
		return e.available[pick%uint64(len(e.available))], nil
	}
	i := (retry - 1) % n
	if i < len(e.preferred) {
		return e.preferred[i], nil
	}
	return e.available[i-len(e.preferred)], nil
}
