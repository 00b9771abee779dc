package core

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/metadata/etcdstore"
	"github.com/pymooncake/pymooncake/core/metadata/httpstore"
)

// openStore opens the shared metadata store named by cs, the default for
// Config.OpenStore. republish is called by the etcd store after its session
// was re-established, so that an outage does not lose our keys.
func openStore(ctx context.Context, cs metadata.ConnString, env config.Env, log *zap.Logger, republish func(context.Context) error) (metadata.Store, error) {
	switch cs.Kind {
	case metadata.Etcd:
		s, err := etcdstore.New(ctx, etcdstore.Config{
			Endpoints: cs.Endpoints,
			LeaseTTL:  env.MetadataLeaseTTL,
			Logger:    log,
			OnReconnect: func(ctx context.Context) {
				if err := republish(ctx); err != nil {
					log.Warn("republish after etcd reconnect", zap.Error(err))
				}
			},
		})
		if err != nil {
			return nil, err // never a typed nil inside the interface
		}
		return s, nil
	case metadata.HTTP:
		s, err := httpstore.New(httpstore.Config{URL: cs.URL, Logger: log})
		if err != nil {
			return nil, err
		}
		// Mooncake's HTTP server (and ours) refuses to overwrite rpc_meta:
		// take over the name of an engine that died without deleting it.
		probe := &handshake.Client{ConnectTimeout: env.HandshakeConnectTimeout, MaxFrame: env.HandshakeMaxFrame, IPv6: env.IPv6}
		return httpstore.ReclaimStaleNames(s, probe.Probe, log), nil
	}
	return nil, fmt.Errorf("metadata backend %v: %w", cs.Kind, engine.ErrNotSupported)
}
