package handshake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"
)

// Client defaults, as Mooncake HEAD's.
const (
	// DefaultConnectTimeout is MC_HANDSHAKE_CONNECT_TIMEOUT's default.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultClientRecvTimeout is the client's SO_RCVTIMEO in Mooncake.
	DefaultClientRecvTimeout = 60 * time.Second
)

// Client sends handshake requests. The zero value is usable; a Client holds
// nothing between calls and may be used by several goroutines at once.
type Client struct {
	// ConnectTimeout bounds each connect (MC_HANDSHAKE_CONNECT_TIMEOUT);
	// 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// RecvTimeout bounds the exchange on a connection, request written and
	// reply read; 0 means DefaultClientRecvTimeout.
	RecvTimeout time.Duration
	// MaxFrame bounds a reply's declared length; 0 means DefaultMaxFrame.
	MaxFrame uint64
	// IPv6 resolves names to IPv6 addresses only, as MC_USE_IPV6 does;
	// otherwise only IPv4 addresses are used.
	IPv6 bool
}

// aLongTimeAgo is a deadline in the past, used to abort blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// Call sends one request of type t with the JSON body payload to hostport
// ("host:port" or "[v6]:port") and returns the reply's body.
//
// It resolves the host, then tries each address in turn, as Mooncake does:
// connect (within ConnectTimeout and ctx), write the frame, read one reply
// frame (within RecvTimeout and ctx), and close the connection right away.
// A reply whose type is not t is ErrUnexpectedType, and one whose body is not
// JSON is ErrMalformed; on ErrMalformed or when ctx ends Call stops, otherwise
// it goes on to the next address and, when none is left, returns the last
// error. Errors name the address. When ctx ended the call the error matches
// ctx.Err(); when ConnectTimeout or RecvTimeout did, it matches
// context.DeadlineExceeded.
func (c *Client) Call(ctx context.Context, hostport string, t MsgType, payload []byte) ([]byte, error) {
	if !json.Valid(payload) {
		return nil, fmt.Errorf("handshake %s to %s: request body: %w", t, hostport, ErrMalformed)
	}
	frame, err := appendFrame(nil, t, payload)
	if err != nil {
		return nil, fmt.Errorf("handshake %s to %s: %w", t, hostport, err)
	}
	addrs, err := c.resolve(ctx, hostport)
	if err != nil {
		return nil, err
	}
	return c.callAddrs(ctx, addrs, t, frame)
}

// Probe checks that hostport's RPC server answers: a Probe request whose
// reply is any JSON of type Probe is success.
func (c *Client) Probe(ctx context.Context, hostport string) error {
	_, err := c.Call(ctx, hostport, Probe, ProbeRequest())
	return err
}

// SendNotify delivers n to hostport. A reply with an empty notify_msg (JSON
// null included) is ErrNotifyRejected, as in Mooncake's sendNotify (whose
// 0.3.13.post1 engine was seen not to pass that failure on to
// transfer_sync: callers decide what a rejection means); the error carries
// the reason a pymooncake receiver gives in the reply's name.
func (c *Client) SendNotify(ctx context.Context, hostport string, n NotifyMsg) error {
	body, err := n.Marshal()
	if err != nil {
		return err
	}
	reply, err := c.Call(ctx, hostport, Notify, body)
	if err != nil {
		return err
	}
	ack, err := DecodeNotifyMsg(reply)
	if err != nil {
		return fmt.Errorf("handshake notify to %s: %w", hostport, err)
	}
	if ack.Msg == "" {
		if ack.Name != "" { // a pymooncake receiver says why (NotifyRefusal)
			return fmt.Errorf("handshake notify %q to %s: %w: %s", n.Name, hostport, ErrNotifyRejected, clip(ack.Name, maxReason))
		}
		return fmt.Errorf("handshake notify %q to %s: %w", n.Name, hostport, ErrNotifyRejected)
	}
	return nil
}

// maxReason bounds the bytes of a peer's refusal reason put into an error.
const maxReason = 256

// clip returns s cut to at most n bytes, marked when cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// FetchMetadata asks hostport for its segment descriptor and returns the
// reply as is (the caller decodes it; a peer with no P2P metadata handler
// answers "null\n"). ownDesc, this engine's own descriptor, is sent as the
// request body as Mooncake does; the peer ignores it, but it must be JSON.
func (c *Client) FetchMetadata(ctx context.Context, hostport string, ownDesc []byte) ([]byte, error) {
	return c.Call(ctx, hostport, Metadata, ownDesc)
}

// resolve turns hostport into the addresses to try, of the configured family.
func (c *Client) resolve(ctx context.Context, hostport string) ([]netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("handshake address %q: %w: %w", hostport, ErrInvalidAddress, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("handshake address %q: %w: bad port %q", hostport, ErrInvalidAddress, portStr)
	}
	if host == "" {
		return nil, fmt.Errorf("handshake address %q: %w: no host", hostport, ErrInvalidAddress)
	}
	network := "ip4"
	if c.IPv6 {
		network = "ip6"
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, network, host)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("resolve handshake host %q: %w", host, ctx.Err())
		}
		return nil, fmt.Errorf("resolve handshake host %q (%s): %w", host, network, err)
	}
	addrs := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		if !c.IPv6 {
			ip = ip.Unmap()
		}
		addrs = append(addrs, netip.AddrPortFrom(ip, uint16(port)))
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("resolve handshake host %q (%s): no address", host, network)
	}
	return addrs, nil
}

// callAddrs tries the frame on each address in turn (see Call).
func (c *Client) callAddrs(ctx context.Context, addrs []netip.AddrPort, t MsgType, frame []byte) ([]byte, error) {
	var last error
	for _, a := range addrs {
		reply, err := c.exchange(ctx, a, t, frame)
		if err == nil {
			return reply, nil
		}
		last = fmt.Errorf("handshake %s to %s: %w", t, a, err)
		if ctxErr(ctx) != nil || errors.Is(err, ErrMalformed) {
			break
		}
	}
	return nil, last
}

// exchange runs one request on a new connection to a.
func (c *Client) exchange(ctx context.Context, a netip.AddrPort, t MsgType, frame []byte) ([]byte, error) {
	network := "tcp4"
	if a.Addr().Is6() {
		network = "tcp6"
	}
	connectTimeout := orDefault(c.ConnectTimeout, DefaultConnectTimeout)
	d := net.Dialer{Timeout: connectTimeout}
	conn, err := d.DialContext(ctx, network, a.String())
	if err != nil {
		if cerr := ctxErr(ctx); cerr != nil {
			return nil, fmt.Errorf("connect: %w (%w)", cerr, err)
		}
		return nil, fmt.Errorf("connect: %w", asDeadline(err, connectTimeout))
	}
	defer conn.Close()

	deadline := time.Now().Add(orDefault(c.RecvTimeout, DefaultClientRecvTimeout))
	if cd, ok := ctx.Deadline(); ok && cd.Before(deadline) {
		deadline = cd
	}
	// Set before AfterFunc, which may fire at once and must win.
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(aLongTimeAgo) })
	defer stop()

	reply, err := roundTrip(conn, t, frame, c.MaxFrame)
	if err != nil {
		if cerr := ctxErr(ctx); cerr != nil {
			return nil, fmt.Errorf("%w (%w)", cerr, err)
		}
		return nil, asDeadline(err, orDefault(c.RecvTimeout, DefaultClientRecvTimeout))
	}
	return reply, nil
}

// asDeadline makes a socket timeout (ConnectTimeout, RecvTimeout) match
// context.DeadlineExceeded, as every deadline does in this project; other
// errors are returned as they are.
func asDeadline(err error, after time.Duration) error {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) ||
		!errors.Is(err, os.ErrDeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout()) {
		return err
	}
	return fmt.Errorf("%w after %s: %w", context.DeadlineExceeded, after, err)
}

// roundTrip writes frame and reads and checks the reply.
func roundTrip(conn net.Conn, t MsgType, frame []byte, maxFrame uint64) ([]byte, error) {
	if _, err := conn.Write(frame); err != nil {
		return nil, fmt.Errorf("write request: %w", err)
	}
	rt, reply, err := ReadFrame(conn, maxFrame)
	if err != nil {
		return nil, fmt.Errorf("read reply: %w", err)
	}
	if rt != t {
		return nil, fmt.Errorf("%w: got %s, want %s", ErrUnexpectedType, rt, t)
	}
	if !json.Valid(reply) {
		return nil, fmt.Errorf("reply body: %w", ErrMalformed)
	}
	return reply, nil
}

// ctxErr is ctx.Err(), or DeadlineExceeded once ctx's deadline has passed
// (a socket deadline taken from ctx can fire before ctx's own timer).
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
