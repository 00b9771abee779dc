package tcp

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pymooncake/pymooncake/core/config"
)

// ConfigFromEnv reads the TCP transport's variables, strictly: a malformed
// or out-of-range value is an error naming the variable and its value.
//
//	MC_TCP_PROTO                     1 speaks the v1 framing even to v2 peers (ForceV1)
//	MC_TCP_STATUS_TIMEOUT_SEC        StatusTimeout and IOTimeout, seconds (default 30)
//	MC_TCP_LANES_PER_PEER            Lanes, 1 to 16 (default 4); the older name
//	                                 MC_TCP_MAX_CONNECTIONS_PER_PEER is read when unset
//	PYMOONCAKE_TCP_POLL_US           PollBudget, microseconds, 0 to 10000 (default 50;
//	                                 0 never polls)
//	PYMOONCAKE_TCP_WINDOW            Window, requests in flight per connection, 1 to
//	                                 1024 (default 16)
//	PYMOONCAKE_TCP_SG                0 turns the scatter-gather framing off (default 1)
//	PYMOONCAKE_TCP_MAX_CONNS         MaxConns, the data server's connections, 32 to 2^20
//	                                 (default 4096, or a quarter of the descriptor limit
//	                                 when lower)
//	PYMOONCAKE_TCP_MAX_CONNS_PER_PEER
//	                                 MaxConnsPerPeer, per remote IP, 32 to 2^20 (default
//	                                 1024, or MaxConns when lower); at most MaxConns
//
// The fields that come from elsewhere (DialTimeout from
// MC_HANDSHAKE_CONNECT_TIMEOUT, Logger, GPU) are left for the caller.
func ConfigFromEnv(lookup config.LookupFunc) (Config, error) {
	var c Config
	p := config.NewParser(lookup)
	if v, ok := p.Lookup("MC_TCP_PROTO"); ok {
		switch strings.TrimSpace(v) {
		case "1":
			c.ForceV1 = true
		case "2", "":
		default:
			p.Fail("MC_TCP_PROTO", v, "want 1 or 2")
		}
	}
	if p.Seconds(&c.StatusTimeout, "MC_TCP_STATUS_TIMEOUT_SEC", 1, 86400) {
		c.IOTimeout = c.StatusTimeout
	}
	lanesKey := "MC_TCP_LANES_PER_PEER"
	if _, ok := p.Lookup(lanesKey); !ok {
		lanesKey = "MC_TCP_MAX_CONNECTIONS_PER_PEER"
	}
	p.Int(&c.Lanes, lanesKey, 1, MaxLanes)
	var pollUS int
	if p.Int(&pollUS, "PYMOONCAKE_TCP_POLL_US", 0, int(MaxPollBudget/time.Microsecond)) {
		c.PollBudget = time.Duration(pollUS) * time.Microsecond
		if pollUS == 0 {
			c.PollBudget = -1 // Config's "never poll"; zero there means the default
		}
	}
	p.Int(&c.Window, "PYMOONCAKE_TCP_WINDOW", 1, MaxWindow)
	sg := true
	p.Bool(&sg, "PYMOONCAKE_TCP_SG")
	c.NoScatterGather = !sg
	p.Int(&c.MaxConns, "PYMOONCAKE_TCP_MAX_CONNS", MinConnsPerPeer, MaxConnsLimit)
	if p.Int(&c.MaxConnsPerPeer, "PYMOONCAKE_TCP_MAX_CONNS_PER_PEER", MinConnsPerPeer, MaxConnsLimit) &&
		c.MaxConns != 0 && c.MaxConnsPerPeer > c.MaxConns {
		p.Fail("PYMOONCAKE_TCP_MAX_CONNS_PER_PEER", strconv.Itoa(c.MaxConnsPerPeer),
			fmt.Sprintf("above PYMOONCAKE_TCP_MAX_CONNS (%d)", c.MaxConns))
	}
	return c, p.Err()
}
