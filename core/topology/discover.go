package topology

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// sysfs locations, relative to the root of the fs.FS given to Discover.
const (
	classInfiniband = "sys/class/infiniband"
	pciDevices      = "sys/bus/pci/devices"
	numaNodes       = "sys/devices/system/node"
	devInfiniband   = "dev/infiniband"
	// peermemModule exists when nvidia-peermem (or the older nv_peer_mem)
	// is loaded.
	peermemModule = "sys/module/nvidia_peermem"
	nvPeerMem     = "sys/module/nv_peer_mem"
)

// portActive is the numeric state of an ACTIVE port (IBV_PORT_ACTIVE).
const portActive = 4

// Discover builds this host's topology from sysfs. fsys is rooted at "/"
// (os.DirFS("/")); gpus may be nil (no GPU entries). filter, initialize's
// device_name list, keeps only the named HCAs when non-empty.
//
// It follows Mooncake HEAD: an HCA needs at least one ACTIVE port and a
// uverbs device node (/dev/infiniband/uverbsN) to be used; the others are
// listed in Skipped. CPU entries prefer the HCAs of their NUMA node (an HCA
// with NUMA node -1 is preferred nowhere); a GPU entry prefers the HCAs
// nearest to it on the PCI tree (Mooncake's character-prefix distance),
// among those of the GPU's NUMA node when there are any. HCAs are sorted by
// name.
//
// A missing /sys/class/infiniband means no HCAs, not an error. A GPUInfo
// error matching ErrUnavailable means no GPUs; any other GPUInfo error is
// returned.
func Discover(fsys fs.FS, gpus GPUInfo, filter []string) (*Topology, error) {
	t := &Topology{Matrix: map[string]metadata.PriorityEntry{}}
	if err := t.discoverHCAs(fsys, filter); err != nil {
		return nil, err
	}
	if err := t.discoverNUMA(fsys); err != nil {
		return nil, err
	}
	if gpus != nil {
		list, err := gpus.GPUs()
		switch {
		case errors.Is(err, ErrUnavailable):
		case err != nil:
			return nil, fmt.Errorf("discover gpus: %w", err)
		default:
			t.GPUs = list
		}
	}
	for _, m := range []string{peermemModule, nvPeerMem} {
		if _, err := fs.Stat(fsys, m); err == nil {
			t.PeerMem = true
		}
	}
	t.buildMatrix(fsys)
	return t, nil
}

func (t *Topology) discoverHCAs(fsys fs.FS, filter []string) error {
	ents, err := fs.ReadDir(fsys, classInfiniband)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("discover hcas: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if len(filter) > 0 && !slices.Contains(filter, name) {
			t.Skipped = append(t.Skipped, Skipped{Name: name, Reason: "not in the device filter"})
			continue
		}
		h, reason := readHCA(fsys, name)
		if reason != "" {
			t.Skipped = append(t.Skipped, Skipped{Name: name, Reason: reason})
			continue
		}
		t.HCAs = append(t.HCAs, h)
	}
	slices.SortFunc(t.HCAs, func(a, b HCA) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

// readHCA reads one /sys/class/infiniband entry; a non-empty reason says
// why the device cannot be used.
func readHCA(fsys fs.FS, name string) (HCA, string) {
	h := HCA{Name: name, NUMANode: -1}
	dev, err := realpath(fsys, path.Join(classInfiniband, name))
	if err != nil {
		return h, fmt.Sprintf("resolve sysfs path: %v", err)
	}
	// The class entry resolves to <pci function>/infiniband/<name>.
	h.PCIPath = path.Dir(path.Dir(dev))
	h.PCIBusID = path.Base(h.PCIPath)
	h.NUMANode = readNUMANode(fsys, path.Join(h.PCIPath, "numa_node"))

	ports, err := fs.ReadDir(fsys, path.Join(dev, "ports"))
	if err != nil {
		return h, fmt.Sprintf("read ports: %v", err)
	}
	for _, p := range ports {
		num, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		port := Port{Num: num}
		state, _ := readTrimmed(fsys, path.Join(dev, "ports", p.Name(), "state"))
		// "4: ACTIVE"
		code, label, _ := strings.Cut(state, ":")
		port.State = strings.TrimSpace(label)
		port.Active = strings.TrimSpace(code) == strconv.Itoa(portActive)
		port.LinkLayer, _ = readTrimmed(fsys, path.Join(dev, "ports", p.Name(), "link_layer"))
		h.Ports = append(h.Ports, port)
	}
	slices.SortFunc(h.Ports, func(a, b Port) int { return a.Num - b.Num })
	if !slices.ContainsFunc(h.Ports, func(p Port) bool { return p.Active }) {
		return h, "no ACTIVE port"
	}

	verbs, err := fs.ReadDir(fsys, path.Join(dev, "device", "infiniband_verbs"))
	if err != nil || len(verbs) == 0 {
		return h, "no uverbs device in sysfs"
	}
	h.UVerbs = verbs[0].Name()
	if _, err := fs.Stat(fsys, path.Join(devInfiniband, h.UVerbs)); err != nil {
		return h, fmt.Sprintf("device node /%s/%s missing", devInfiniband, h.UVerbs)
	}
	return h, ""
}

func (t *Topology) discoverNUMA(fsys fs.FS) error {
	ents, err := fs.ReadDir(fsys, numaNodes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("discover numa nodes: %w", err)
	}
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), "node")
		if !ok || !e.IsDir() {
			continue
		}
		id, err := strconv.Atoi(n)
		if err != nil || id < 0 {
			continue
		}
		t.NUMANodes = append(t.NUMANodes, id)
	}
	slices.Sort(t.NUMANodes)
	return nil
}

func (t *Topology) buildMatrix(fsys fs.FS) {
	for _, node := range t.NUMANodes {
		var e metadata.PriorityEntry
		for _, h := range t.HCAs {
			if h.NUMANode == node {
				e.Preferred = append(e.Preferred, h.Name)
			} else {
				e.Available = append(e.Available, h.Name)
			}
		}
		t.Matrix["cpu:"+strconv.Itoa(node)] = metadata.PriorityEntry{Preferred: nonNil(e.Preferred), Available: nonNil(e.Available)}
	}
	for i := range t.GPUs {
		g := &t.GPUs[i]
		gpuPath := ""
		if id, err := NormalizeBusID(g.BusID); err == nil {
			g.BusID = id
			if p, err := realpath(fsys, path.Join(pciDevices, id)); err == nil {
				gpuPath = p
			}
			if g.NUMANode < 0 {
				g.NUMANode = readNUMANode(fsys, path.Join(pciDevices, id, "numa_node"))
			}
		}
		t.Matrix["cuda:"+strconv.Itoa(g.Ordinal)] = t.gpuEntry(*g, gpuPath)
	}
}

// gpuEntry prefers the HCAs at the smallest PCI distance from the GPU,
// among the HCAs on the GPU's NUMA node when it has any.
func (t *Topology) gpuEntry(g GPU, gpuPath string) metadata.PriorityEntry {
	sameNode := g.NUMANode >= 0 && slices.ContainsFunc(t.HCAs, func(h HCA) bool { return h.NUMANode == g.NUMANode })
	best := -1
	dist := make([]int, len(t.HCAs))
	for i, h := range t.HCAs {
		dist[i] = pciDistance(h.PCIPath, gpuPath)
		if sameNode && h.NUMANode != g.NUMANode {
			dist[i] = -1
		}
		if dist[i] >= 0 && (best < 0 || dist[i] < best) {
			best = dist[i]
		}
	}
	e := metadata.PriorityEntry{Preferred: []string{}, Available: []string{}}
	for i, h := range t.HCAs {
		if best >= 0 && dist[i] == best {
			e.Preferred = append(e.Preferred, h.Name)
		} else {
			e.Available = append(e.Available, h.Name)
		}
	}
	return e
}
