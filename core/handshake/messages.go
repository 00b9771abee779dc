package handshake

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// HandShakeDesc is the body of a Connection request and reply: Mooncake's
// TransferMetadata::HandShakeDesc (reference/protocol.md §4.4).
type HandShakeDesc struct {
	// LocalNICPath is the sender's NIC path, "server_name@device".
	LocalNICPath string
	// PeerNICPath is the NIC path the sender wants to reach.
	PeerNICPath string
	// QPNum lists the sender's queue pair numbers.
	QPNum []uint32
	// ReplyMsg, in a reply, is non-empty when the passive side refused.
	ReplyMsg string
	// Payload is an opaque transport string (Mooncake HEAD).
	Payload string
	// LocalLID is the sender's InfiniBand LID (Mooncake HEAD).
	LocalLID uint16
	// LocalGID is the sender's GID (Mooncake HEAD).
	LocalGID string
	// BarexPort is the accl-barex listen port. It is written only when
	// non-nil, as only USE_BAREX builds of Mooncake write it.
	BarexPort *int
}

// Marshal encodes h as Mooncake HEAD does (FastWriter: keys sorted, compact,
// trailing newline), with every HEAD field; barex_port only when set. The
// empty desc encodes as
//
//	{"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""}
//
// plus "\n". The error is always nil; it is there so that a field whose
// encoding can fail can be added without changing callers.
func (h HandShakeDesc) Marshal() ([]byte, error) {
	o := newObject()
	if h.BarexPort != nil {
		o.int("barex_port", int64(*h.BarexPort))
	}
	o.str("local_gid", h.LocalGID)
	o.uint("local_lid", uint64(h.LocalLID))
	o.str("local_nic_path", h.LocalNICPath)
	o.str("payload", h.Payload)
	o.str("peer_nic_path", h.PeerNICPath)
	o.uints32("qp_num", h.QPNum)
	o.str("reply_msg", h.ReplyMsg)
	return o.done(), nil
}

// DecodeHandShakeDesc decodes a HandShakeDesc from PR or HEAD peers.
//
// Like Mooncake's decoder it takes a missing or null field as empty, ignores
// fields it does not know (ready_ack, efa_addr, ...), takes a JSON null body
// as the empty desc, and treats a local_lid that is not an integer literal
// in 0..65535 as 0 and a local_gid that is not a string as "" (Mooncake: "not
// isUInt / isString"). Keys match exactly (case-sensitive) and a repeated key
// takes its last value, as in jsoncpp. Where Mooncake would throw or coerce
// (a body that is not an object; a number where a string belongs; a qp_num
// entry that is not a uint32; a barex_port that is not an int32) it returns
// an error matching ErrMalformed and the zero HandShakeDesc.
func DecodeHandShakeDesc(b []byte) (HandShakeDesc, error) {
	fields, err := decodeObject(b)
	if err != nil {
		return HandShakeDesc{}, fmt.Errorf("decode handshake desc: %w", err)
	}
	var h HandShakeDesc
	for _, f := range []struct {
		key string
		dst *string
	}{
		{"local_nic_path", &h.LocalNICPath},
		{"peer_nic_path", &h.PeerNICPath},
		{"reply_msg", &h.ReplyMsg},
		{"payload", &h.Payload},
	} {
		if err := decodeField(fields, f.key, f.dst); err != nil {
			return HandShakeDesc{}, fmt.Errorf("decode handshake desc: %w", err)
		}
	}
	if err := decodeField(fields, "qp_num", &h.QPNum); err != nil {
		return HandShakeDesc{}, fmt.Errorf("decode handshake desc: %w", err)
	}
	if len(h.QPNum) == 0 {
		h.QPNum = nil
	}
	var port *int32
	if err := decodeField(fields, "barex_port", &port); err != nil {
		return HandShakeDesc{}, fmt.Errorf("decode handshake desc: %w", err)
	}
	if port != nil {
		p := int(*port)
		h.BarexPort = &p
	}
	// Tolerated as Mooncake tolerates them: a bad value reads as zero.
	if decodeField(fields, "local_lid", &h.LocalLID) != nil {
		h.LocalLID = 0
	}
	if decodeField(fields, "local_gid", &h.LocalGID) != nil {
		h.LocalGID = ""
	}
	return h, nil
}

// NotifyMsg is the body of a Notify request and reply: Mooncake's NotifyDesc.
type NotifyMsg struct {
	// Name is the notify's name (Python: TransferNotify.name).
	Name string
	// Msg is the notify's text, JSON key "notify_msg". In a reply, empty
	// means the peer refused the notify.
	Msg string
}

// Marshal encodes n as Mooncake does: {"name":..,"notify_msg":..} plus "\n".
// The error is always nil (see HandShakeDesc.Marshal).
func (n NotifyMsg) Marshal() ([]byte, error) {
	o := newObject()
	o.str("name", n.Name)
	o.str("notify_msg", n.Msg)
	return o.done(), nil
}

// DecodeNotifyMsg decodes a NotifyMsg. A missing or null field, or a JSON
// null body, reads as empty and unknown fields are ignored; a body that is
// not an object, or a field that is not a string, is ErrMalformed.
func DecodeNotifyMsg(b []byte) (NotifyMsg, error) {
	fields, err := decodeObject(b)
	if err != nil {
		return NotifyMsg{}, fmt.Errorf("decode notify: %w", err)
	}
	var n NotifyMsg
	if err := decodeField(fields, "name", &n.Name); err != nil {
		return NotifyMsg{}, fmt.Errorf("decode notify: %w", err)
	}
	if err := decodeField(fields, "notify_msg", &n.Msg); err != nil {
		return NotifyMsg{}, fmt.Errorf("decode notify: %w", err)
	}
	return n, nil
}

// Fixed bodies, as Mooncake writes them.
const (
	notifyAck    = `{"name":"","notify_msg":"success"}` + "\n"
	probeRequest = "{}\n"
	probeReply   = `{"status":"success"}` + "\n"
	nullReply    = "null\n"
)

// NotifyAck returns the reply a receiver sends to accept a notify:
// {"name":"","notify_msg":"success"} plus "\n".
func NotifyAck() []byte { return []byte(notifyAck) }

// NotifyRefusal returns the reply a receiver sends to refuse a notify: an
// empty notify_msg, which Mooncake's sender takes as a refusal, and the
// reason in name, which Mooncake ignores and Client.SendNotify reports.
func NotifyRefusal(reason string) []byte {
	b, _ := NotifyMsg{Name: reason}.Marshal()
	return b
}

// ProbeRequest returns the body of a Probe request: {} plus "\n".
func ProbeRequest() []byte { return []byte(probeRequest) }

// ProbeReply returns the reply to a Probe: {"status":"success"} plus "\n".
func ProbeReply() []byte { return []byte(probeReply) }

// decodeObject splits a JSON object into its fields. JSON null gives no
// fields; anything else that is not an object is ErrMalformed.
func decodeObject(b []byte) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return fields, nil
}

// decodeField decodes fields[key] into dst, leaving dst as it is when the key
// is missing or null.
func decodeField(fields map[string]json.RawMessage, key string, dst any) error {
	raw, ok := fields[key]
	if !ok || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fmt.Errorf("field %q: %w: %w", key, ErrMalformed, err)
	}
	return nil
}
