// Command gen writes nvmlsym's trampolines_gen.go: one trampoline per NVML
// C function that github.com/NVIDIA/go-nvml/pkg/nvml calls, in the version
// go.mod requires, and the table of their names.
//
//	go generate ./core/topology/nvmlgpu/internal/nvmlsym
//	go run ./core/topology/nvmlgpu/internal/nvmlsym/gen -o FILE
//
// The functions are the C.nvml* calls of go-nvml's cgo files (as `go list`
// reports them for this platform); nvml.h, shipped in the same package,
// gives each one's return type, which picks the trampoline's fallback:
// nvmlReturn_t functions return NVML_ERROR_FUNCTION_NOT_FOUND when
// unbound, `const char *` ones a fixed message. Any other return type, or
// a called nvml name that nvml.h does not declare as a function, stops
// the generator: the trampolines' fallbacks would not fit it.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// nvmlPackage is go-nvml's cgo package.
const nvmlPackage = "github.com/NVIDIA/go-nvml/pkg/nvml"

// Fallbacks by return type (nvmlsym.h declares them, bind.go defines them).
var fallbacks = map[string]string{
	"nvmlReturn_t": "mc_nvml_unbound",
	"const char *": "mc_nvml_unbound_string",
}

func main() {
	out := flag.String("o", "trampolines_gen.go", "file to write")
	flag.Parse()
	src, err := generate()
	if err != nil {
		fmt.Fprintf(os.Stderr, "nvmlsym/gen: %v\n", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, src, 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "nvmlsym/gen: %v\n", err)
		os.Exit(1)
	}
}

// listed is what `go list -json` says of go-nvml's package.
type listed struct {
	Dir      string
	CgoFiles []string
	Module   struct{ Version string }
}

// generate locates go-nvml through the go command and returns the file.
func generate() ([]byte, error) {
	cmd := exec.Command("go", "list", "-json", nvmlPackage)
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %w", nvmlPackage, err)
	}
	var p listed
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("go list %s: %w", nvmlPackage, err)
	}
	if len(p.CgoFiles) == 0 {
		return nil, fmt.Errorf("go list %s: no cgo files (is CGO_ENABLED=0?)", nvmlPackage)
	}
	called, err := cCalls(p.Dir, p.CgoFiles)
	if err != nil {
		return nil, err
	}
	header, err := os.ReadFile(filepath.Join(p.Dir, "nvml.h"))
	if err != nil {
		return nil, err
	}
	returns, err := declaredReturns(header)
	if err != nil {
		return nil, err
	}
	fns, err := trampolines(called, returns)
	if err != nil {
		return nil, err
	}
	return render(p.Module.Version, fns)
}

// cCalls returns the names of the C functions that files call (C.name(...)).
func cCalls(dir string, files []string) (map[string]bool, error) {
	called := map[string]bool{}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "C" {
					called[sel.Sel.Name] = true
				}
			}
			return true
		})
	}
	return called, nil
}

// declaration is one NVML function declaration of nvml.h: an optional
// DEPRECATED(version) marker, the return type, DECLDIR (a calling-convention
// macro, empty on Linux, that nvml.h places inside the return type of
// nvmlErrorString), the name and its "(".
var declaration = regexp.MustCompile(`^\s*(?:DEPRECATED\([^)]*\)\s*)?([A-Za-z_][\w\s*]*?)\s*\bDECLDIR\b([\w\s*]*?)\b(nvml\w+)\s*\(`)

// declaredReturns maps each function nvml.h declares to its return type,
// spaced as "const char *".
func declaredReturns(header []byte) (map[string]string, error) {
	returns := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(header))
	sc.Buffer(make([]byte, 0, 1<<16), 1<<20)
	for sc.Scan() {
		m := declaration.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		ret := strings.Join(strings.Fields(strings.ReplaceAll(m[1]+" "+m[2], "*", " * ")), " ")
		if prev, ok := returns[m[3]]; ok && prev != ret {
			return nil, fmt.Errorf("nvml.h declares %s returning both %q and %q", m[3], prev, ret)
		}
		returns[m[3]] = ret
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(returns) == 0 {
		return nil, fmt.Errorf("nvml.h: no function declarations found (has its format changed?)")
	}
	return returns, nil
}

// fn is one trampoline: the function and its fallback.
type fn struct{ name, fallback string }

// trampolines picks, in name order, the called functions nvml.h declares.
// Other C names go-nvml calls (C.CString, C.free, C.size_t) are libc's or
// cgo's; an nvml name called but not declared as a function is an error.
func trampolines(called map[string]bool, returns map[string]string) ([]fn, error) {
	var fns []fn
	var problems []string
	for name := range called {
		ret, ok := returns[name]
		if !ok {
			if strings.HasPrefix(name, "nvml") {
				problems = append(problems, fmt.Sprintf("go-nvml calls C.%s, which nvml.h does not declare as a function", name))
			}
			continue
		}
		fb, ok := fallbacks[ret]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s returns %q: no fallback for that type (nvmlsym.h, bind.go)", name, ret))
			continue
		}
		fns = append(fns, fn{name: name, fallback: fb})
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return nil, fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	if len(fns) == 0 {
		return nil, fmt.Errorf("go-nvml calls no NVML function (has %s changed?)", nvmlPackage)
	}
	slices.SortFunc(fns, func(a, b fn) int { return strings.Compare(a.name, b.name) })
	return fns, nil
}

// render writes the Go file: the preamble instantiates the trampolines
// and defines their table; names lists them in table order.
func render(version string, fns []fn) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "// Code generated by nvmlsym/gen from %s %s; DO NOT EDIT.\n\n", nvmlPackage, version)
	b.WriteString("//go:build cgo && linux && (amd64 || arm64)\n\n")
	b.WriteString("package nvmlsym\n\n")
	b.WriteString("/*\n#include \"nvmlsym.h\"\n\n")
	fmt.Fprintf(&b, "MC_NVML_HIDDEN void *mc_nvml_fn[%d];\n", len(fns))
	fmt.Fprintf(&b, "MC_NVML_HIDDEN const size_t mc_nvml_count = %d;\n\n", len(fns))
	for i, f := range fns {
		fmt.Fprintf(&b, "MC_NVML_TRAMPOLINE(%s, %d, %s);\n", f.name, i, f.fallback)
	}
	b.WriteString("*/\nimport \"C\"\n\n")
	fmt.Fprintf(&b, "// goNVML is the go-nvml version the trampolines were generated from.\nconst goNVML = %q\n\n", version)
	b.WriteString("// names are the NVML functions go-nvml calls; trampoline i jumps to the\n// address bound for names[i].\nvar names = [...]string{\n")
	for _, f := range fns {
		fmt.Fprintf(&b, "\t%q,\n", f.name)
	}
	b.WriteString("}\n")
	return format.Source(b.Bytes())
}
