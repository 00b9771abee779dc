package topology

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// maxSymlinks bounds symlink resolution, as the kernel's 40.
const maxSymlinks = 40

var errSymlinkLoop = errors.New("too many levels of symbolic links")

// realpath resolves every symlink in name (a slash-separated path relative
// to the root of fsys) like realpath(3), without leaving the fs root: ".."
// at the root stays at the root and absolute link targets start from it.
// fsys must implement fs.ReadLinkFS for links to be followed.
func realpath(fsys fs.FS, name string) (string, error) {
	pending := strings.Split(name, "/")
	resolved := ""
	links := 0
	for len(pending) > 0 {
		elem := pending[0]
		pending = pending[1:]
		switch elem {
		case "", ".":
			continue
		case "..":
			resolved = parent(resolved)
			continue
		}
		next := path.Join(resolved, elem)
		fi, err := fs.Lstat(fsys, next)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > maxSymlinks {
			return "", &fs.PathError{Op: "realpath", Path: name, Err: errSymlinkLoop}
		}
		target, err := fs.ReadLink(fsys, next)
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			resolved = ""
		}
		pending = append(strings.Split(target, "/"), pending...)
	}
	if resolved == "" {
		return ".", nil
	}
	return resolved, nil
}

func parent(p string) string {
	d := path.Dir(p)
	if d == "." || d == "/" {
		return ""
	}
	return d
}

// readTrimmed reads a small sysfs attribute without its trailing newline.
func readTrimmed(fsys fs.FS, name string) (string, error) {
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// readNUMANode reads a numa_node attribute; anything unreadable is -1, as
// Mooncake's default.
func readNUMANode(fsys fs.FS, name string) int {
	s, err := readTrimmed(fsys, name)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < -1 {
		return -1
	}
	return n
}

// pciDistance is Mooncake's getPciDistance: the number of '/' left in both
// resolved paths after their common character prefix; -1 when either path
// is unknown.
func pciDistance(a, b string) int {
	if a == "" || b == "" {
		return -1
	}
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return strings.Count(a[i:], "/") + strings.Count(b[i:], "/")
}

// NormalizeBusID turns a PCI bus id in any of the usual spellings (NVML's
// "00000000:3B:00.0", CUDA's "0000:3b:00.0", a bare "3b:00.0") into sysfs's
// form: lower-case, a domain of at least four hex digits,
// "dddd:bb:dd.f".
func NormalizeBusID(id string) (string, error) {
	s := strings.ToLower(strings.TrimSpace(id))
	fields := strings.Split(s, ":")
	var domain, bus uint64
	var devfn string
	var err error
	switch len(fields) {
	case 3:
		if domain, err = strconv.ParseUint(fields[0], 16, 32); err != nil {
			return "", fmt.Errorf("pci bus id %q: bad domain", id)
		}
		fields = fields[1:]
	case 2:
	default:
		return "", fmt.Errorf("pci bus id %q: want [domain:]bus:device.function", id)
	}
	if bus, err = strconv.ParseUint(fields[0], 16, 8); err != nil {
		return "", fmt.Errorf("pci bus id %q: bad bus", id)
	}
	devfn = fields[1]
	ds, fnStr, ok := strings.Cut(devfn, ".")
	if !ok {
		return "", fmt.Errorf("pci bus id %q: no function", id)
	}
	dev, err := strconv.ParseUint(ds, 16, 8)
	if err != nil || dev > 0x1f {
		return "", fmt.Errorf("pci bus id %q: bad device", id)
	}
	fn, err := strconv.ParseUint(fnStr, 16, 8)
	if err != nil || fn > 7 {
		return "", fmt.Errorf("pci bus id %q: bad function", id)
	}
	return fmt.Sprintf("%04x:%02x:%02x.%x", domain, bus, dev, fn), nil
}
