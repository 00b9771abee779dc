package metadata

import (
	"encoding/json"
	"fmt"
	"math"
)

// DecodeSegmentDesc parses a segment descriptor published by a Mooncake or
// pymooncake peer, applying Mooncake's validity rules (HEAD, protocol.md §2.3,
// §2.4):
//
//   - tcp: any buffer with an empty name, addr 0 or length 0 makes the whole
//     descriptor invalid; devices, keys and priority_matrix are ignored.
//   - rdma, barex: every device needs a name and gid; every buffer needs
//     name, addr and length; a non-empty rkey list needs as many lkeys and,
//     for rdma, one key per device. A priority_matrix that cannot be parsed
//     is ignored, as Mooncake only warns.
//   - tcp_proto_version defaults to 1 when absent; null numbers read as 0 and
//     null strings as "", as jsoncpp does.
//
// It is stricter than jsoncpp where laxness could only hide corruption:
// numbers must be JSON integers of the right range (a number sent as a
// string, a negative, fractional or exponent number is an error), strings
// must be strings, a buffer's addr+length must not overflow, keys must fit in
// 32 bits, and nothing but whitespace may follow the document. Whitespace and
// a trailing newline are accepted. Keys match exactly, case included.
//
// A protocol other than tcp, rdma or barex (including a multi-protocol
// array) is an error matching ErrUnsupportedProtocol; every other failure
// matches ErrMalformed. On error the result is nil.
func DecodeSegmentDesc(data []byte) (*SegmentDesc, error) {
	d, err := decodeSegmentDesc(data)
	if err != nil {
		return nil, fmt.Errorf("decode segment descriptor: %w", err)
	}
	return d, nil
}

// rawBuffer is a buffer read before the descriptor's protocol is known
// ("buffers" sorts before "protocol"), with keys as wide as any protocol
// writes them.
type rawBuffer struct {
	name         string
	addr, length uint64
	rkey, lkey   []uint64
}

func decodeSegmentDesc(data []byte) (*SegmentDesc, error) {
	if len(data) > MaxDescriptorSize {
		return nil, malformed("%d bytes exceeds the limit of %d", len(data), MaxDescriptorSize)
	}
	r := newReader(data)
	if err := r.openObject(); err != nil {
		return nil, err
	}
	d := &SegmentDesc{TCPProtoVersion: 1}
	var (
		protocol, devices, matrix json.RawMessage
		buffers                   []rawBuffer
	)
	for r.more() {
		key, err := r.key()
		if err != nil {
			return nil, err
		}
		var n uint64
		switch key {
		case "name":
			d.Name, err = r.str()
		case "protocol":
			protocol, err = r.raw()
		case "tcp_data_port":
			n, err = r.uint(math.MaxUint16)
			d.TCPDataPort = int(n)
		case "tcp_proto_version":
			n, err = r.uint(math.MaxInt32)
			d.TCPProtoVersion = int(n)
		case "timestamp":
			d.Timestamp, err = r.str()
		case "rdma_server_name":
			d.RDMAServerName, err = r.str()
		case "tcp_data_host":
			d.TCPDataHost, err = r.str()
		case "buffers":
			buffers, err = r.buffers()
		case "devices":
			devices, err = r.raw()
		case "priority_matrix":
			matrix, err = r.raw()
		default:
			var v json.RawMessage
			if v, err = r.raw(); err == nil {
				if d.Extra == nil {
					d.Extra = make(map[string]json.RawMessage)
				}
				d.Extra[key] = v
			}
		}
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", key, err)
		}
	}
	if err := r.close(); err != nil {
		return nil, err
	}
	if err := r.end(); err != nil {
		return nil, err
	}

	var err error
	if d.Protocol, err = decodeProtocol(protocol); err != nil {
		return nil, err
	}
	withKeys := d.Protocol != ProtocolTCP
	for i, rb := range buffers {
		b := BufferDesc{Name: rb.name, Addr: rb.addr, Length: rb.length}
		if withKeys {
			if b.RKey, err = narrowKeys(rb.rkey); err != nil {
				return nil, fmt.Errorf("buffer %d: rkey: %w", i, err)
			}
			if b.LKey, err = narrowKeys(rb.lkey); err != nil {
				return nil, fmt.Errorf("buffer %d: lkey: %w", i, err)
			}
		}
		d.Buffers = append(d.Buffers, b)
	}
	if withKeys {
		if d.Devices, err = decodeDevices(devices); err != nil {
			return nil, fmt.Errorf("key \"devices\": %w", err)
		}
		d.PriorityMatrix = decodePriorityMatrix(matrix)
	}
	if err := d.validate(); err != nil {
		return nil, err
	}
	return d, nil
}

// openObject consumes the '{' that must start a document.
func (r *reader) openObject() error {
	null, err := r.open('{')
	if err != nil {
		return err
	}
	if null {
		return malformed("want object, got null")
	}
	return nil
}

// decodeProtocol reads the protocol value: a string naming one of ours.
func decodeProtocol(raw json.RawMessage) (string, error) {
	if raw == nil {
		return "", malformed("no protocol")
	}
	r := newReader(raw)
	tok, err := r.token()
	if err != nil {
		return "", err
	}
	switch v := tok.(type) {
	case string:
		switch v {
		case ProtocolTCP, ProtocolRDMA, ProtocolBarex:
			return v, nil
		}
		return "", fmt.Errorf("%w %q", ErrUnsupportedProtocol, v)
	case nil:
		// jsoncpp reads null as "", which no transport matches.
		return "", fmt.Errorf("%w \"\"", ErrUnsupportedProtocol)
	case json.Delim:
		if v == '[' {
			return "", fmt.Errorf("%w: multi-protocol descriptor", ErrUnsupportedProtocol)
		}
	}
	return "", malformed("protocol: want string, got %s", tokenKind(tok))
}

// buffers reads the "buffers" array (null reads as none).
func (r *reader) buffers() ([]rawBuffer, error) {
	null, err := r.open('[')
	if err != nil || null {
		return nil, err
	}
	var out []rawBuffer
	for r.more() {
		b, err := r.buffer()
		if err != nil {
			return nil, fmt.Errorf("buffer %d: %w", len(out), err)
		}
		out = append(out, b)
	}
	return out, r.close()
}

func (r *reader) buffer() (rawBuffer, error) {
	var b rawBuffer
	if err := r.openObject(); err != nil {
		return b, err
	}
	for r.more() {
		key, err := r.key()
		if err != nil {
			return b, err
		}
		switch key {
		case "name":
			b.name, err = r.str()
		case "addr":
			b.addr, err = r.uint(math.MaxUint64)
		case "length":
			b.length, err = r.uint(math.MaxUint64)
		case "rkey":
			b.rkey, err = r.uints()
		case "lkey":
			b.lkey, err = r.uints()
		default:
			err = r.skip()
		}
		if err != nil {
			return b, fmt.Errorf("key %q: %w", key, err)
		}
	}
	return b, r.close()
}

// uints reads an array of unsigned integers (null reads as none).
func (r *reader) uints() ([]uint64, error) {
	null, err := r.open('[')
	if err != nil || null {
		return nil, err
	}
	var out []uint64
	for r.more() {
		v, err := r.uint(math.MaxUint64)
		if err != nil {
			return nil, fmt.Errorf("element %d: %w", len(out), err)
		}
		out = append(out, v)
	}
	return out, r.close()
}

// narrowKeys converts keys to the 32-bit form ibverbs and barex use.
func narrowKeys(keys []uint64) ([]uint32, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	out := make([]uint32, len(keys))
	for i, k := range keys {
		if k > math.MaxUint32 {
			return nil, malformed("key %d: %d does not fit in 32 bits", i, k)
		}
		out[i] = uint32(k)
	}
	return out, nil
}

// decodeDevices reads the "devices" array of an rdma or barex descriptor.
func decodeDevices(raw json.RawMessage) ([]DeviceDesc, error) {
	if raw == nil {
		return nil, nil
	}
	r := newReader(raw)
	null, err := r.open('[')
	if err != nil || null {
		return nil, err
	}
	var out []DeviceDesc
	for r.more() {
		dev, err := r.device()
		if err != nil {
			return nil, fmt.Errorf("device %d: %w", len(out), err)
		}
		out = append(out, dev)
	}
	if err := r.close(); err != nil {
		return nil, err
	}
	return out, r.end()
}

func (r *reader) device() (DeviceDesc, error) {
	var dev DeviceDesc
	if err := r.openObject(); err != nil {
		return dev, err
	}
	for r.more() {
		key, err := r.key()
		if err != nil {
			return dev, err
		}
		switch key {
		case "name":
			dev.Name, err = r.str()
		case "lid":
			var lid uint64
			lid, err = r.uint(math.MaxUint16)
			dev.LID = uint16(lid)
		case "gid":
			dev.GID, err = r.str()
		default:
			err = r.skip()
		}
		if err != nil {
			return dev, fmt.Errorf("key %q: %w", key, err)
		}
	}
	return dev, r.close()
}

// decodePriorityMatrix reads Topology::parse's form, an object of
// location -> [[preferred...],[available...]]. Anything else yields no
// matrix: Mooncake only warns about an unparsable one. An empty matrix is nil.
func decodePriorityMatrix(raw json.RawMessage) map[string]PriorityEntry {
	if raw == nil {
		return nil
	}
	var m map[string][][]string
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil
	}
	var out map[string]PriorityEntry
	for loc, lists := range m {
		if len(lists) != 2 {
			return nil
		}
		if out == nil {
			out = make(map[string]PriorityEntry, len(m))
		}
		out[loc] = PriorityEntry{Preferred: nonEmpty(lists[0]), Available: nonEmpty(lists[1])}
	}
	return out
}

// nonEmpty returns s, or nil when s is empty, so decoded values compare equal
// however an empty list was written.
func nonEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}
