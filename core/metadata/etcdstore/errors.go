package etcdstore

import "errors"

var (
	// ErrUnreachable means no etcd endpoint answered within the dial timeout.
	ErrUnreachable = errors.New("etcdstore: etcd unreachable")
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("etcdstore: store closed")
	// ErrConfig is matched by every invalid-configuration error from New.
	ErrConfig = errors.New("etcdstore: invalid config")
)
