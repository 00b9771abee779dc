package handshake

import "errors"

var (
	// ErrFrameTooLarge is returned by ReadFrame when a frame declares a
	// length above the limit.
	ErrFrameTooLarge = errors.New("handshake: frame too large")
	// ErrEmptyFrame is returned by ReadFrame when a frame declares length 0
	// (Mooncake HEAD rejects it too).
	ErrEmptyFrame = errors.New("handshake: empty frame")
	// ErrTruncated is returned when the stream ends inside a frame. The
	// error also matches io.ErrUnexpectedEOF.
	ErrTruncated = errors.New("handshake: truncated frame")
	// ErrUnknownType is returned for a frame whose first byte is a type byte
	// of no known type (0x80..0xff, see ReadFrame), and by WriteFrame for a
	// MsgType it cannot write.
	ErrUnknownType = errors.New("handshake: unknown message type")
	// ErrUnexpectedType is returned by a Client when the reply's type is not
	// the request's type (Mooncake's ERR_SOCKET).
	ErrUnexpectedType = errors.New("handshake: unexpected reply type")
	// ErrNotifyRejected is returned by SendNotify when the peer's reply
	// carries an empty notify_msg (Mooncake's ERR_METADATA).
	ErrNotifyRejected = errors.New("handshake: notify rejected by peer")
	// ErrMalformed is returned for a body that is not the JSON expected
	// (Mooncake's ERR_MALFORMED_JSON), and for a payload WriteFrame cannot
	// frame.
	ErrMalformed = errors.New("handshake: malformed message")
	// ErrInvalidAddress is returned by a Client for a host:port it cannot
	// use.
	ErrInvalidAddress = errors.New("handshake: invalid address")
)
