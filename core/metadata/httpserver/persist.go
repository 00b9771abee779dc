package httpserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// snapshotVersion is the persist file's format version.
const snapshotVersion = 1

// snapshot is the persist file: keys and values as base64 ([]byte), since
// both are arbitrary bytes that JSON strings could not carry exactly.
type snapshot struct {
	Version int     `json:"version"`
	Entries []entry `json:"entries"`
}

type entry struct {
	Key   []byte `json:"key"`
	Value []byte `json:"value"`
}

// loadSnapshot reads path; a missing file is an empty store.
func loadSnapshot(path string) (map[string][]byte, error) {
	data := map[string][]byte{}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return data, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrPersistFile, path, err)
	}
	var snap snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return nil, fmt.Errorf("%w: decode %s: %w", ErrPersistFile, path, err)
	}
	if snap.Version != snapshotVersion {
		return nil, fmt.Errorf("%w: %s has version %d, want %d", ErrPersistFile, path, snap.Version, snapshotVersion)
	}
	for i, e := range snap.Entries {
		if len(e.Key) == 0 {
			return nil, fmt.Errorf("%w: %s: entry %d has an empty key", ErrPersistFile, path, i)
		}
		if e.Value == nil {
			e.Value = []byte{}
		}
		data[string(e.Key)] = e.Value
	}
	return data, nil
}

// writeSnapshot replaces path atomically with data: it writes and fsyncs a
// temporary file in the same directory, renames it over path, and fsyncs
// the directory.
func writeSnapshot(path string, data map[string][]byte) (err error) {
	snap := snapshot{Version: snapshotVersion, Entries: make([]entry, 0, len(data))}
	for k, v := range data {
		snap.Entries = append(snap.Entries, entry{Key: []byte(k), Value: v})
	}
	sort.Slice(snap.Entries, func(i, j int) bool { return string(snap.Entries[i].Key) < string(snap.Entries[j].Key) })
	b, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename to %s: %w", path, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // best effort: the rename is already visible
		_ = d.Close()
	}
	return nil
}
