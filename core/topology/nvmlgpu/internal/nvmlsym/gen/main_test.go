package main

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGeneratedFileIsCurrent regenerates the trampolines from the go-nvml
// that go.mod requires: a go-nvml update that calls another NVML function
// fails here until `go generate` is run (and would otherwise leave that
// function undefined in the extension).
func TestGeneratedFileIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	got, err := generate()
	require.NoError(t, err)
	want, err := os.ReadFile("../trampolines_gen.go")
	require.NoError(t, err)
	require.Equal(t, string(want), string(got), "trampolines_gen.go is stale: go generate ./core/topology/nvmlgpu/internal/nvmlsym")
}

func TestDeclaredReturns(t *testing.T) {
	tests := []struct {
		name string
		line string
		want map[string]string
	}{
		{name: "nvmlReturn_t", line: "nvmlReturn_t DECLDIR nvmlInit_v2(void);", want: map[string]string{"nvmlInit_v2": "nvmlReturn_t"}},
		{name: "two spaces, parameters on the next line", line: "nvmlReturn_t  DECLDIR nvmlDeviceX(nvmlDevice_t device,",
			want: map[string]string{"nvmlDeviceX": "nvmlReturn_t"}},
		{name: "deprecated", line: "DEPRECATED(13.0) nvmlReturn_t DECLDIR nvmlDeviceGetTemperature(nvmlDevice_t d, unsigned int *t);",
			want: map[string]string{"nvmlDeviceGetTemperature": "nvmlReturn_t"}},
		{name: "DECLDIR inside the type", line: "const DECLDIR char* nvmlErrorString(nvmlReturn_t result);",
			want: map[string]string{"nvmlErrorString": "const char *"}},
		{name: "a see-also in a comment", line: " * @see nvmlDeviceGetTemperature", want: map[string]string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := declaredReturns([]byte("#define DECLDIR\n" + tc.line + "\nnvmlReturn_t DECLDIR nvmlShutdown(void);\n"))
			require.NoError(t, err)
			tc.want["nvmlShutdown"] = "nvmlReturn_t"
			require.Equal(t, tc.want, got)
		})
	}
	_, err := declaredReturns([]byte("int DECLDIR nvmlA(void);\nnvmlReturn_t DECLDIR nvmlA(void);\n"))
	require.ErrorContains(t, err, "nvmlA returning both")
	_, err = declaredReturns([]byte("/* nothing */\n"))
	require.ErrorContains(t, err, "no function declarations")
}

func TestTrampolines(t *testing.T) {
	returns := map[string]string{"nvmlInit_v2": "nvmlReturn_t", "nvmlErrorString": "const char *", "nvmlGetCount": "unsigned int"}
	tests := []struct {
		name    string
		called  []string
		want    []fn
		wantErr string
	}{
		{name: "sorted, libc and cgo names skipped", called: []string{"nvmlInit_v2", "free", "CString", "nvmlErrorString"},
			want: []fn{{"nvmlErrorString", "mc_nvml_unbound_string"}, {"nvmlInit_v2", "mc_nvml_unbound"}}},
		{name: "return type without a fallback", called: []string{"nvmlGetCount"}, wantErr: `nvmlGetCount returns "unsigned int"`},
		{name: "undeclared nvml name", called: []string{"nvmlInit_v2", "nvmlMacro"}, wantErr: "C.nvmlMacro, which nvml.h does not declare"},
		{name: "no nvml call", called: []string{"free"}, wantErr: "calls no NVML function"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			called := map[string]bool{}
			for _, c := range tc.called {
				called[c] = true
			}
			got, err := trampolines(called, returns)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}
