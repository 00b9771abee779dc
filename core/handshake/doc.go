// Package handshake speaks Mooncake's handshake/RPC socket protocol
// (SocketHandShakePlugin, reference/protocol.md §4): one length-prefixed JSON
// request and one reply per TCP connection, used to exchange RDMA connection
// descriptors (Connection), to fetch a peer's segment descriptor in P2P mode
// (Metadata), to deliver transfer notifies (Notify) and to probe liveness
// (Probe).
//
// It owns three things:
//
//   - the framing (frame.go): WriteFrame and ReadFrame, byte for byte as
//     Mooncake's writeString and readString;
//   - the message bodies (messages.go): HandShakeDesc, NotifyMsg and the probe
//     bodies, encoded as jsoncpp's FastWriter writes them (sorted keys,
//     compact, trailing newline) and decoded leniently where Mooncake is;
//   - a Server and a Client for the RPC port.
//
// # Ownership
//
// NewServer takes ownership of the listener it is given: Server.Close closes
// it, closes every live connection, cancels the context passed to handlers and
// waits for every goroutine the server started. The server bounds its
// connections in total and per remote IP and gives a new connection
// ServerConfig.HeaderTimeout to send its request's length; at a limit it
// closes the longest-idle connection of the IP holding the most (see
// NewServer), so that idle connections cannot starve working ones. Handlers must return once
// their context is cancelled, or Close waits for them. A Client holds no
// resources between calls: each Call opens one connection and closes it as
// soon as the reply is read (a Mooncake daemon that waits for the client to
// close stalls if we do not; §4.3).
//
// # Errors
//
// Frame and message problems match the sentinels in errors.go
// (ErrFrameTooLarge, ErrEmptyFrame, ErrTruncated, ErrUnknownType,
// ErrMalformed). A reply of the wrong type matches ErrUnexpectedType, a notify
// the peer refused matches ErrNotifyRejected. A Client call cut short by its
// context returns an error matching ctx.Err(); one cut short by
// Client.ConnectTimeout or Client.RecvTimeout matches
// context.DeadlineExceeded too, as every deadline does in this project.
// Every Client error names the peer address.
package handshake
