package httpserver

// The benchmarks use only the package's API and HTTP, and prefill the store
// by writing a persist file in the JSON format (version 1) that every
// version opens, so that the same file runs against the whole-file writer
// of earlier versions (docs/benchmarks.md, "Metadata server").

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

type benchCase struct {
	name  string
	keys  int // prefilled keys
	value int // bytes per prefilled value
	put   int // bytes per benchmarked PUT
}

var benchCases = []benchCase{
	{"keys=1500/value=4KiB", 1500, 4 << 10, 4 << 10},
	{"keys=100000/value=1KiB", 100_000, 1 << 10, 1 << 10},
	{"keys=24/value=16MiB/put=10B", 24, 16 << 20, 10},
}

// BenchmarkPut measures one client's PUT latency (each PUT is on disk when
// it returns) against a persisted store: p50/p99 in ms, and the process's
// peak RSS while the PUTs ran. PUTs write 1,000 new keys, then overwrite
// them.
func BenchmarkPut(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			s, c := benchServer(b, bc)
			body := bytes.Repeat([]byte("p"), bc.put)
			lat := make([]time.Duration, 0, b.N)
			resetPeakRSS()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				benchRequest(b, c, http.MethodPut, benchURL(s, fmt.Sprintf("mooncake/bench/put/%d", i%1000)), body)
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportLatency(b, "put", lat)
			reportPeakRSS(b)
		})
	}
}

// BenchmarkPutParallel measures PUT throughput with 8 clients per CPU
// writing distinct keys, where group commit lets PUTs share fsyncs.
func BenchmarkPutParallel(b *testing.B) {
	for _, bc := range benchCases[1:2] {
		b.Run(bc.name, func(b *testing.B) {
			s, c := benchServer(b, bc)
			body := bytes.Repeat([]byte("p"), bc.put)
			var next atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := fmt.Sprintf("mooncake/bench/par/%d", next.Add(1)%10000)
					benchRequest(b, c, http.MethodPut, benchURL(s, k), body)
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "PUT/s")
		})
	}
}

// BenchmarkGetWhilePutting measures GET latency of a small key while
// another client PUTs 10-byte values without pause, next to large values.
func BenchmarkGetWhilePutting(b *testing.B) {
	for _, bc := range []benchCase{benchCases[2]} {
		b.Run(bc.name, func(b *testing.B) {
			s, c := benchServer(b, bc)
			benchRequest(b, c, http.MethodPut, benchURL(s, "mooncake/bench/get"), []byte("small"))
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			var puts atomic.Int64
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					req, err := http.NewRequestWithContext(ctx, http.MethodPut,
						benchURL(s, fmt.Sprintf("mooncake/bench/bg/%d", i%1000)), strings.NewReader("0123456789"))
					if err != nil {
						panic(err)
					}
					resp, err := c.Do(req)
					if err != nil {
						return // cancelled
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					puts.Add(1)
				}
			}()
			defer func() { cancel(); wg.Wait() }()
			// Measure from the writer's first completed PUT on.
			for deadline := time.Now().Add(time.Minute); puts.Load() == 0; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					b.Fatal("the background writer completed no PUT")
				}
			}
			lat := make([]time.Duration, 0, b.N)
			donePuts := puts.Load()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				benchRequest(b, c, http.MethodGet, benchURL(s, "mooncake/bench/get"), nil)
				lat = append(lat, time.Since(t0))
			}
			elapsed := time.Since(start)
			b.StopTimer()
			reportLatency(b, "get", lat)
			b.ReportMetric(float64(puts.Load()-donePuts)/elapsed.Seconds(), "bg-PUT/s")
		})
	}
}

// benchServer starts a server on a persist file prefilled with bc.keys
// values of bc.value bytes.
func benchServer(b *testing.B, bc benchCase) (*Server, *http.Client) {
	b.Helper()
	file := filepath.Join(b.TempDir(), "meta")
	writeBenchJSON(b, file, bc.keys, bc.value)
	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, MaxBody: 32 << 20, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	b.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := s.Close(context.Background()); err != nil {
			b.Error(err)
		}
	})
	return s, &http.Client{Transport: tr, Timeout: time.Minute}
}

// writeBenchJSON streams a version 1 JSON persist file of n values of size
// bytes, without holding it in memory.
func writeBenchJSON(b *testing.B, path string, n, size int) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	value := make([]byte, size)
	_, _ = w.WriteString(`{"version":1,"entries":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			_ = w.WriteByte(',')
		}
		key := fmt.Sprintf("mooncake/bench/%08d", i)
		copy(value, key)
		fmt.Fprintf(w, `{"key":"%s","value":"`, base64.StdEncoding.EncodeToString([]byte(key)))
		enc := base64.NewEncoder(base64.StdEncoding, w)
		_, _ = enc.Write(value)
		_ = enc.Close()
		_, _ = w.WriteString(`"}`)
	}
	_, _ = w.WriteString(`]}`)
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

func benchURL(s *Server, key string) string {
	return "http://" + s.Addr() + Path + "?key=" + url.QueryEscape(key)
}

func benchRequest(b *testing.B, c *http.Client, method, rawURL string, body []byte) {
	req, err := http.NewRequest(method, rawURL, bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("%s %s: status %d", method, rawURL, resp.StatusCode)
	}
}

func reportLatency(b *testing.B, what string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return float64(lat[int(q*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(0.5), what+"-p50-ms")
	b.ReportMetric(ms(0.99), what+"-p99-ms")
	b.ReportMetric(ms(1), what+"-max-ms")
}

// resetPeakRSS frees what the prefill left and resets the kernel's peak
// RSS (VmHWM) of this process, where Linux allows it.
func resetPeakRSS() {
	runtime.GC()
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// reportPeakRSS reports VmHWM, and the anonymous (heap) part of the RSS at
// the end, where Linux provides them. The rest of the RSS is mapped file
// pages: the bbolt file, which the kernel can reclaim.
func reportPeakRSS(b *testing.B) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(status), "\n") {
		name, v, ok := strings.Cut(line, ":")
		if !ok || (name != "VmHWM" && name != "RssAnon") {
			continue
		}
		kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		if err != nil {
			continue
		}
		if name == "VmHWM" {
			b.ReportMetric(float64(kb)/1024, "peak-RSS-MB")
		} else {
			b.ReportMetric(float64(kb)/1024, "end-anon-RSS-MB")
		}
	}
}
