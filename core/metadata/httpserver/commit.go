package httpserver

import (
	"context"
	"net/http"
	"strings"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
)

// Group commit: one goroutine takes every write waiting in the queue (up to
// these bounds) and persists them in one transaction, so that concurrent
// PUTs share the fsyncs. A lone PUT is committed at once: nothing waits for
// a batch to fill.
const (
	queueLen      = 1024
	maxBatchOps   = 1024
	maxBatchBytes = 64 << 20 // a first op larger than this still goes alone
)

// op is one PUT or DELETE on its way through the committer.
type op struct {
	key     string
	value   []byte
	deleted bool
	done    chan result // buffered: the committer never waits on it
}

// result is the HTTP answer to an op.
type result struct {
	code int
	text string
}

var (
	resUpdated   = result{http.StatusOK, msgUpdated}
	resDeleted   = result{http.StatusOK, msgDeleted}
	resNotFound  = result{http.StatusNotFound, msgNotFound}
	resDuplicate = result{http.StatusBadRequest, msgDuplicate}
	resPersist   = result{http.StatusInternalServerError, msgPersist}
)

// newHandler opens cfg.PersistFile, if set, and starts the committer; the
// caller must call close.
func newHandler(cfg Config, log *zap.Logger) (*handler, error) {
	h := &handler{
		log:     log,
		maxBody: cfg.MaxBody,
		data:    map[string][]byte{},
		ops:     make(chan *op, queueLen),
		stopped: make(chan struct{}),
	}
	if cfg.PersistFile != "" {
		s, data, err := openStore(cfg.PersistFile, log, cfg.beforeCommit)
		if err != nil {
			return nil, err
		}
		h.store, h.data, h.maxKey = s, data, bolt.MaxKeySize
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go h.commitLoop(ctx)
	return h, nil
}

// close stops the committer, after the batch it is writing if any, and
// closes the store. Changes still queued are answered 503 by their
// handlers. Call it once, after the HTTP server has stopped.
func (h *handler) close() error {
	h.cancel()
	<-h.stopped
	if h.store != nil {
		return h.store.close()
	}
	return nil
}

// keys is the number of keys stored.
func (h *handler) keys() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.data)
}

func (h *handler) commitLoop(ctx context.Context) {
	defer close(h.stopped)
	batch := make([]*op, 0, maxBatchOps)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case o := <-h.ops:
			batch = append(batch, o)
		}
		size := len(batch[0].value)
	fill:
		for len(batch) < maxBatchOps && size < maxBatchBytes {
			select {
			case o := <-h.ops:
				batch = append(batch, o)
				size += len(o.value)
			default:
				break fill
			}
		}
		h.commit(batch)
	}
}

// commit decides each op of batch in order, as Mooncake's server would one
// by one, persists the resulting changes in one transaction, applies them
// to the map and answers every op. Nothing is applied or acknowledged
// before it is on disk; a failed write changes nothing in the map.
func (h *handler) commit(batch []*op) {
	// next is each touched key's state after the ops decided so far: a
	// value, or nil for deleted. Only the committer writes h.data, so it
	// reads it without the lock.
	next := map[string][]byte{}
	lookup := func(key string) bool {
		if v, ok := next[key]; ok {
			return v != nil
		}
		_, ok := h.data[key]
		return ok
	}
	results := make([]result, len(batch))
	for i, o := range batch {
		exists := lookup(o.key)
		switch {
		case o.deleted && !exists:
			results[i] = resNotFound
		case o.deleted:
			next[o.key], results[i] = nil, resDeleted
		case exists && strings.Contains(o.key, "rpc_meta"):
			results[i] = resDuplicate
		default:
			next[o.key], results[i] = o.value, resUpdated
		}
	}
	if len(next) > 0 {
		if err := h.persist(next); err != nil {
			for i, r := range results {
				if r == resUpdated || r == resDeleted {
					results[i] = resPersist
				}
			}
		} else {
			h.mu.Lock()
			for k, v := range next {
				if v == nil {
					delete(h.data, k)
				} else {
					h.data[k] = v
				}
			}
			h.mu.Unlock()
		}
	}
	for i, o := range batch {
		o.done <- results[i]
	}
}

// persist writes next to the store, if any. After one failure it refuses
// every later write: a failed fsync leaves the file's pages in an unknown
// state (the failed commit may still reach the disk), and only reopening
// the file tells which.
func (h *handler) persist(next map[string][]byte) error {
	if h.store == nil {
		return nil
	}
	if h.failed != nil {
		return h.failed
	}
	changes := make([]change, 0, len(next))
	for k, v := range next {
		changes = append(changes, change{key: k, value: v, deleted: v == nil})
	}
	if err := h.store.write(changes); err != nil {
		h.failed = err
		h.log.Error("metadata persist file write failed; refusing changes until restart",
			zap.String("path", h.store.path), zap.Int("changes", len(changes)), zap.Error(err))
		return err
	}
	return nil
}
