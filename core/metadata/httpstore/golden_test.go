package httpstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
)

// goldenRequest is one HTTP metadata request that a real Mooncake engine
// sent, from testdata/mooncake/<version>/manifest.json ("http.requests").
// Status is what the recording server (with mooncake_http_metadata_server's
// semantics) answered.
type goldenRequest struct {
	Method   string  `json:"method"`
	Path     string  `json:"path"`
	Key      string  `json:"key"`
	Status   int     `json:"status"`
	BodyFile *string `json:"body_file"`
}

// goldenHTTP loads every captured HTTP request sequence; it fails when there
// is none, so a moved testdata directory cannot pass silently.
func goldenHTTP(t *testing.T) map[string][]goldenRequest {
	t.Helper()
	manifests, err := filepath.Glob("../../../testdata/mooncake/*/manifest.json")
	require.NoError(t, err)
	require.NotEmpty(t, manifests, "no Mooncake captures under testdata/mooncake")
	out := map[string][]goldenRequest{}
	for _, m := range manifests {
		b, err := os.ReadFile(m)
		require.NoError(t, err)
		var manifest struct {
			Observations struct {
				Requests []goldenRequest `json:"http.requests"`
			} `json:"observations"`
		}
		require.NoError(t, json.Unmarshal(b, &manifest), m)
		require.NotEmpty(t, manifest.Observations.Requests, "%s has no http.requests", m)
		out[filepath.Dir(m)] = manifest.Observations.Requests
	}
	return out
}

func (r goldenRequest) body(t *testing.T, dir string) []byte {
	if r.BodyFile == nil {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(dir, *r.BodyFile))
	require.NoError(t, err)
	return b
}

// TestGoldenEscaping checks escapeKey against the URLs libcurl built.
func TestGoldenEscaping(t *testing.T) {
	for dir, reqs := range goldenHTTP(t) {
		for i, r := range reqs {
			require.Equal(t, r.Path, "/metadata?key="+escapeKey(r.Key), "%s request %d", dir, i)
		}
	}
}

// TestGoldenReplay replays the captured sequence: raw, to check that our
// server answers as Mooncake's did, and through Store, to check that each
// answer means to us what it meant to Mooncake.
func TestGoldenReplay(t *testing.T) {
	testutil.ResourceCheck(t)
	c := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(c.CloseIdleConnections)
	for dir, reqs := range goldenHTTP(t) {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			raw := strings.TrimSuffix(startMetadataServer(t), "/metadata")
			for i, r := range reqs {
				req, err := http.NewRequest(r.Method, raw+r.Path, bytes.NewReader(r.body(t, dir)))
				require.NoError(t, err)
				resp, err := c.Do(req)
				require.NoError(t, err)
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				require.Equal(t, r.Status, resp.StatusCode, "request %d %s %s", i, r.Method, r.Key)
			}

			s := newStore(t, Config{URL: startMetadataServer(t)})
			ctx := ctxT(t)
			last := map[string][]byte{}
			for i, r := range reqs {
				var err error
				switch r.Method {
				case http.MethodGet:
					var v []byte
					v, err = s.Get(ctx, r.Key)
					if err == nil {
						require.Equal(t, last[r.Key], v, "request %d", i)
					}
				case http.MethodPut:
					body := r.body(t, dir)
					if err = s.Put(ctx, r.Key, body); err == nil {
						last[r.Key] = body
					}
				case http.MethodDelete:
					err = s.Delete(ctx, r.Key)
				default:
					t.Fatalf("request %d: unexpected method %s", i, r.Method)
				}
				var se *StatusError
				switch {
				case r.Status == http.StatusOK, r.Method == http.MethodDelete && r.Status == http.StatusNotFound:
					require.NoError(t, err, "request %d", i)
				case r.Method == http.MethodGet && r.Status == http.StatusNotFound:
					require.ErrorIs(t, err, metadata.ErrNotFound, "request %d", i)
				default:
					require.True(t, errors.As(err, &se), "request %d: %v", i, err)
					require.Equal(t, r.Status, se.Code, "request %d", i)
				}
			}
		})
	}
}
