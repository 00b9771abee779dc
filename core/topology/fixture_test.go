package topology

import (
	"io/fs"
	"path"
	"strconv"
	"strings"
	"testing/fstest"
)

// sysfsHost describes a fixture host; buildSysfs turns it into the sysfs
// (and /dev) tree Discover reads.
type sysfsHost struct {
	numaNodes []int
	hcas      []fixtureHCA
	gpus      []fixtureGPU
	peermem   bool
}

type fixtureHCA struct {
	name   string
	pci    string // resolved PCI function path under sys/devices
	numa   string // numa_node file content
	ports  []string
	uverbs string // "" = no infiniband_verbs entry
	noDev  bool   // uverbs in sysfs but no /dev node
}

type fixtureGPU struct {
	pci  string
	numa string
}

func symlink(target string) *fstest.MapFile {
	return &fstest.MapFile{Data: []byte(target), Mode: fs.ModeSymlink | 0o777}
}

func file(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s + "\n"), Mode: 0o444} }

func dir() *fstest.MapFile { return &fstest.MapFile{Mode: fs.ModeDir | 0o555} }

// rel returns the relative symlink target that leads from the directory of
// link to target (both relative to the fs root), as sysfs writes them.
func rel(link, target string) string {
	from := strings.Split(path.Dir(link), "/")
	to := strings.Split(target, "/")
	i := 0
	for i < len(from) && i < len(to) && from[i] == to[i] {
		i++
	}
	return strings.Repeat("../", len(from)-i) + strings.Join(to[i:], "/")
}

func buildSysfs(h sysfsHost) fstest.MapFS {
	m := fstest.MapFS{}
	for _, n := range h.numaNodes {
		d := "sys/devices/system/node/node" + itoa(n)
		m[d] = dir()
		m[d+"/cpulist"] = file("0-7")
	}
	m["sys/devices/system/node/online"] = file("0-1")
	for _, hca := range h.hcas {
		bdf := path.Base(hca.pci)
		pciDir := "sys/devices/" + hca.pci
		m[pciDir+"/numa_node"] = file(hca.numa)
		devDir := pciDir + "/infiniband/" + hca.name
		class := "sys/class/infiniband/" + hca.name
		m[class] = symlink(rel(class, devDir))
		m[devDir+"/device"] = symlink(rel(devDir+"/device", pciDir))
		bus := "sys/bus/pci/devices/" + bdf
		m[bus] = symlink(rel(bus, pciDir))
		for i, st := range hca.ports {
			p := devDir + "/ports/" + itoa(i+1)
			m[p+"/state"] = file(st)
			m[p+"/link_layer"] = file("Ethernet")
			m[p+"/gids/0"] = file("fe80:0000:0000:0000:0000:0000:0000:0001")
		}
		if hca.uverbs != "" {
			m[pciDir+"/infiniband_verbs/"+hca.uverbs+"/ibdev"] = file(hca.name)
			if !hca.noDev {
				m["dev/infiniband/"+hca.uverbs] = file("")
			}
		}
	}
	for _, g := range h.gpus {
		pciDir := "sys/devices/" + g.pci
		m[pciDir+"/numa_node"] = file(g.numa)
		bus := "sys/bus/pci/devices/" + path.Base(g.pci)
		m[bus] = symlink(rel(bus, pciDir))
	}
	if h.peermem {
		m["sys/module/nvidia_peermem/refcnt"] = file("0")
	}
	return m
}

func itoa(n int) string { return strconv.Itoa(n) }

const (
	active = "4: ACTIVE"
	down   = "1: DOWN"
)

// twoSocketHost is modelled on a 2-socket 8-GPU training server cut down to
// two GPUs: HCAs and GPUs share PCIe switches, one HCA reports NUMA node -1
// (as in VMs), one HCA has only a DOWN port and one lacks its uverbs device
// node.
var twoSocketHost = sysfsHost{
	numaNodes: []int{0, 1},
	hcas: []fixtureHCA{
		{name: "mlx5_0", pci: "pci0000:00/0000:00:01.0/0000:3b:00.0", numa: "0", ports: []string{active}, uverbs: "uverbs0"},
		{name: "mlx5_1", pci: "pci0000:00/0000:00:02.0/0000:5e:00.0", numa: "0", ports: []string{down, active}, uverbs: "uverbs1"},
		{name: "mlx5_2", pci: "pci0000:80/0000:80:01.0/0000:86:00.0", numa: "1", ports: []string{active}, uverbs: "uverbs2"},
		{name: "mlx5_3", pci: "pci0000:80/0000:80:03.0/0000:af:00.0", numa: "-1", ports: []string{active}, uverbs: "uverbs3"},
		{name: "mlx5_4", pci: "pci0000:80/0000:80:04.0/0000:d8:00.0", numa: "1", ports: []string{down}, uverbs: "uverbs4"},
		{name: "mlx5_5", pci: "pci0000:80/0000:80:05.0/0000:e1:00.0", numa: "1", ports: []string{active}, uverbs: "uverbs5", noDev: true},
	},
	gpus: []fixtureGPU{
		{pci: "pci0000:00/0000:00:01.0/0000:3c:00.0", numa: "0"},
		{pci: "pci0000:80/0000:80:01.0/0000:87:00.0", numa: "-1"},
	},
	peermem: true,
}

// fakeGPUs is a GPUInfo fake.
type fakeGPUs struct {
	gpus []GPU
	err  error
}

func (f fakeGPUs) GPUs() ([]GPU, error) { return f.gpus, f.err }
