package httpserver

import (
	"encoding/json"
	"fmt"
	"os"
)

// The persist file's first format (pymooncake before the bbolt store) was
// one JSON document, rewritten whole after every change. openStore
// migrates such a file to a store; nothing writes this format any more.

// snapshotVersion is the JSON file's format version.
const snapshotVersion = 1

// snapshot is the JSON file: keys and values as base64 ([]byte), since
// both are arbitrary bytes that JSON strings could not carry exactly.
type snapshot struct {
	Version int     `json:"version"`
	Entries []entry `json:"entries"`
}

type entry struct {
	Key   []byte `json:"key"`
	Value []byte `json:"value"`
}

// loadSnapshot reads the JSON file at path.
func loadSnapshot(path string) (map[string][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var snap snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	if snap.Version != snapshotVersion {
		return nil, fmt.Errorf("%s has version %d, want %d", path, snap.Version, snapshotVersion)
	}
	data := make(map[string][]byte, len(snap.Entries))
	for i, e := range snap.Entries {
		if len(e.Key) == 0 {
			return nil, fmt.Errorf("entry %d has an empty key", i)
		}
		if e.Value == nil {
			e.Value = []byte{}
		}
		data[string(e.Key)] = e.Value
	}
	return data, nil
}
