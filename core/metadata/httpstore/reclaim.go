package httpstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// staleProbeTimeout bounds the look at the engine that holds a name.
const staleProbeTimeout = 2 * time.Second

// ReclaimStaleNames wraps an HTTP metadata store s. Mooncake's HTTP metadata
// server (and ours, which copies it) refuses to overwrite an rpc_meta key
// (400 "Duplicate rpc_meta key not allowed"), so an engine that died
// without deleting its keys (SIGKILL, a crash, a lost host) could never
// start again under its name. When a Put of an rpc_meta key is refused,
// the key's value is read: the same value is success (a republish); a value
// whose RPC address refuses connections belongs to a dead engine and is
// deleted and written again; anything else (an engine answers there, or
// nothing says it is gone) keeps the refusal, so a live engine's name is
// never taken over. probe sends a Probe to an engine's RPC address
// (handshake.Client.Probe).
func ReclaimStaleNames(s metadata.Store, probe func(ctx context.Context, hostport string) error, log *zap.Logger) metadata.Store {
	if log == nil {
		log = zap.NewNop()
	}
	return &staleNameStore{Store: s, probe: probe, log: log}
}

type staleNameStore struct {
	metadata.Store
	probe func(ctx context.Context, hostport string) error
	log   *zap.Logger
}

func (s *staleNameStore) Put(ctx context.Context, key string, value []byte) error {
	err := s.Store.Put(ctx, key, value)
	var se *StatusError
	if err == nil || !strings.Contains(key, "rpc_meta") || !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		return err
	}
	cur, gerr := s.Store.Get(ctx, key)
	if gerr != nil {
		return err
	}
	if bytes.Equal(cur, value) {
		return nil
	}
	old, derr := metadata.DecodeRPCMeta(cur)
	if derr != nil {
		return err
	}
	holder := metadata.JoinHostPort(old.IPOrHostName, old.RPCPort)
	pctx, cancel := context.WithTimeout(ctx, staleProbeTimeout)
	perr := s.probe(pctx, holder)
	cancel()
	if !errors.Is(perr, syscall.ECONNREFUSED) {
		return fmt.Errorf("%w (the name is held by the engine at %s)", err, holder)
	}
	if derr := s.Store.Delete(ctx, key); derr != nil {
		return fmt.Errorf("%w (deleting the dead engine's key failed: %v)", err, derr)
	}
	if err := s.Store.Put(ctx, key, value); err != nil {
		return err
	}
	s.log.Warn("took over the rpc_meta key of a dead engine of the same name",
		zap.String("key", key), zap.String("dead_rpc", holder))
	return nil
}
