package httpserver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

// The persist file is a bbolt database (go.etcd.io/bbolt, the store under
// etcd): a copy-on-write B+tree whose commit writes the changed pages,
// fdatasyncs, then writes one of two checksummed meta pages and fdatasyncs
// again. A crash at any point leaves the previous or the new meta page
// valid, so the file always opens at the last completed commit, and a
// commit costs pages touched, not the size of the store.
//
// Layout (storeLayout 1):
//
//	bucket "info"      key "layout" -> decimal layout version
//	bucket "metadata"  key -> value                   (value <= largeValue)
//	                   key -> bucket {"v" -> value}   (value >  largeValue)
//
// bbolt keeps a value inside its leaf and never splits a leaf below two
// entries, so a large value stored inline would be rewritten with every
// change to a key next to it. A large value gets a bucket of its own
// instead: the leaf then holds a 16-byte bucket header, and only writes to
// that key rewrite the value's pages.
const (
	storeLayout = "1"
	// largeValue is the size above which a value gets its own bucket. A
	// change rewrites its leaf, which holds at most four inline values, so
	// a small PUT rewrites at most about 3*largeValue bytes of neighbours.
	largeValue = 64 << 10
	// lockTimeout bounds the wait for the file lock that another process
	// (a second server on the same file) may hold.
	lockTimeout = 2 * time.Second
	// migrateSuffix names the temporary file a version 1 JSON file is
	// converted into before it replaces the original.
	migrateSuffix = ".migrating"
)

var errNotEmpty = errors.New("not empty")

var (
	bucketInfo = []byte("info")
	bucketData = []byte("metadata")
	keyLayout  = []byte("layout")
	keyValue   = []byte("v")
)

// change is one key's state after a batch: a value, or deleted.
type change struct {
	key     string
	value   []byte
	deleted bool
}

// store is the open persist file.
type store struct {
	db   *bolt.DB
	path string
	// beforeCommit, if set, runs inside every write transaction after its
	// changes and before it commits; an error aborts the commit. Tests set
	// it (through Config) to make the disk slow or failing.
	beforeCommit func() error
}

func boltOptions() *bolt.Options {
	return &bolt.Options{
		Timeout: lockTimeout,
		// As etcd: the free list is rebuilt from the tree at open instead
		// of being written with every commit.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	}
}

// openStore opens path as a store, creating it if missing and migrating a
// version 1 JSON file, and returns it with its contents. Every error
// matches ErrPersistFile.
func openStore(path string, log *zap.Logger, beforeCommit func() error) (*store, map[string][]byte, error) {
	kind, err := sniff(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrPersistFile, err)
	}
	if kind == fileJSON {
		n, err := migrate(path)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: migrate %s from JSON: %w", ErrPersistFile, path, err)
		}
		log.Info("migrated metadata persist file from JSON (version 1) to bbolt",
			zap.String("path", path), zap.Int("keys", n))
	}
	db, err := bolt.Open(path, 0o600, boltOptions())
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			err = fmt.Errorf("file is locked by another process (another metadata server?): %w", err)
		}
		return nil, nil, fmt.Errorf("%w: open %s: %w", ErrPersistFile, path, err)
	}
	s := &store{db: db, path: path, beforeCommit: beforeCommit}
	if kind == fileMissing {
		// The file's directory entry must survive a power loss too.
		if err := syncDir(path); err != nil {
			_ = db.Close()
			return nil, nil, fmt.Errorf("%w: %w", ErrPersistFile, err)
		}
	}
	data, err := s.init()
	if err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrPersistFile, path, err)
	}
	return s, data, nil
}

// init checks the layout, or creates it in an empty file, then loads every
// key. A file it refuses is left unchanged.
func (s *store) init() (data map[string][]byte, err error) {
	defer recoverError("load store", &err)
	empty := false
	err = s.db.View(func(tx *bolt.Tx) error {
		info := tx.Bucket(bucketInfo)
		if info == nil {
			empty = tx.ForEach(func([]byte, *bolt.Bucket) error { return errNotEmpty }) == nil
			if !empty {
				return errors.New("bbolt file without a pymooncake metadata layout")
			}
			return nil
		}
		if v := info.Get(keyLayout); string(v) != storeLayout {
			return fmt.Errorf("layout %q, want %q", v, storeLayout)
		}
		if tx.Bucket(bucketData) == nil {
			return fmt.Errorf("bucket %q missing", bucketData)
		}
		return nil
	})
	if err == nil && empty {
		err = s.db.Update(createLayout)
	}
	if err != nil {
		return nil, err
	}
	data = map[string][]byte{}
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketData)
		return b.ForEach(func(k, v []byte) error {
			if len(k) == 0 {
				return errors.New("empty key")
			}
			if v == nil { // a bucket: a large value
				sub := b.Bucket(k)
				if sub == nil {
					return fmt.Errorf("key %q: neither a value nor a bucket", k)
				}
				if v = sub.Get(keyValue); v == nil {
					return fmt.Errorf("key %q: value bucket without a value", k)
				}
			}
			// v points into the file's mapping, valid only in this
			// transaction: copy it.
			data[string(k)] = append(make([]byte, 0, len(v)), v...)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

func createLayout(tx *bolt.Tx) error {
	info, err := tx.CreateBucket(bucketInfo)
	if err != nil {
		return fmt.Errorf("create bucket %q: %w", bucketInfo, err)
	}
	if err := info.Put(keyLayout, []byte(storeLayout)); err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	if _, err := tx.CreateBucket(bucketData); err != nil {
		return fmt.Errorf("create bucket %q: %w", bucketData, err)
	}
	return nil
}

// write applies changes in one transaction and returns once it is on disk.
func (s *store) write(changes []change) (err error) {
	defer recoverError("write store", &err)
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketData)
		for _, c := range changes {
			if err := apply(b, c); err != nil {
				return fmt.Errorf("key %q: %w", c.key, err)
			}
		}
		if s.beforeCommit != nil {
			return s.beforeCommit()
		}
		return nil
	})
}

// apply writes one change to b, moving the key between the inline and the
// own-bucket forms as its size requires.
func apply(b *bolt.Bucket, c change) error {
	key := []byte(c.key)
	if c.deleted {
		err := b.Delete(key)
		if errors.Is(err, berrors.ErrIncompatibleValue) {
			err = b.DeleteBucket(key)
		}
		return err
	}
	if len(c.value) <= largeValue {
		err := b.Put(key, c.value)
		if errors.Is(err, berrors.ErrIncompatibleValue) {
			if err = b.DeleteBucket(key); err == nil {
				err = b.Put(key, c.value)
			}
		}
		return err
	}
	sub := b.Bucket(key)
	if sub == nil {
		if err := b.Delete(key); err != nil {
			return err
		}
		var err error
		if sub, err = b.CreateBucket(key); err != nil {
			return err
		}
	}
	return sub.Put(keyValue, c.value)
}

func (s *store) close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close %s: %w", s.path, err)
	}
	return nil
}

// recoverError turns a panic (bbolt panics on some corruptions) into *err.
func recoverError(op string, err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("%s: panic: %v", op, p)
	}
}

type fileKind int

const (
	fileMissing fileKind = iota
	fileBolt             // or empty, which bbolt initialises
	fileJSON
)

// sniff tells a version 1 JSON file (which starts with '{', after optional
// white space) from a bbolt file (which starts with a page header whose
// first 8 bytes, the page id, are zero).
func sniff(path string) (fileKind, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fileMissing, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	head := make([]byte, 512)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	if t := bytes.TrimLeft(head[:n], " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return fileJSON, nil
	}
	return fileBolt, nil
}

// migrate converts the version 1 JSON file at path into a store: it
// writes the store to path+migrateSuffix, which bbolt syncs, renames it
// over path and syncs the directory. A crash leaves either the JSON file
// or the complete store at path.
func migrate(path string) (int, error) {
	data, err := loadSnapshot(path)
	if err != nil {
		return 0, err
	}
	tmp := path + migrateSuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	db, err := bolt.Open(tmp, 0o600, boltOptions())
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", tmp, err)
	}
	s := &store{db: db, path: tmp}
	err = func() (err error) {
		defer recoverError("write store", &err)
		return db.Update(func(tx *bolt.Tx) error {
			if err := createLayout(tx); err != nil {
				return err
			}
			b := tx.Bucket(bucketData)
			for k, v := range data {
				if err := apply(b, change{key: k, value: v}); err != nil {
					return fmt.Errorf("key %q: %w", k, err)
				}
			}
			return nil
		})
	}()
	if cerr := s.close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return 0, fmt.Errorf("rename %s over %s: %w", tmp, path, err)
	}
	return len(data), syncDir(path)
}

// syncDir fsyncs the directory holding path, so that a file created or
// renamed there survives a power loss.
func syncDir(path string) error {
	dir := filepath.Dir(path)
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
