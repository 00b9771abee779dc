package verbs

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// PortState is ibv_port_state.
type PortState uint32

// Port states.
const (
	PortNop         PortState = 0
	PortDown        PortState = 1
	PortInit        PortState = 2
	PortArmed       PortState = 3
	PortActive      PortState = 4
	PortActiveDefer PortState = 5
)

func (s PortState) String() string {
	switch s {
	case PortNop:
		return "NOP"
	case PortDown:
		return "DOWN"
	case PortInit:
		return "INIT"
	case PortArmed:
		return "ARMED"
	case PortActive:
		return "ACTIVE"
	case PortActiveDefer:
		return "ACTIVE_DEFER"
	}
	return fmt.Sprintf("PortState(%d)", uint32(s))
}

// MTU is ibv_mtu: 1 = 256 bytes ... 5 = 4096 bytes.
type MTU uint32

// MTUs.
const (
	MTU256  MTU = 1
	MTU512  MTU = 2
	MTU1024 MTU = 3
	MTU2048 MTU = 4
	MTU4096 MTU = 5
)

// Bytes is the MTU in bytes, 0 for an invalid value.
func (m MTU) Bytes() int {
	if m < MTU256 || m > MTU4096 {
		return 0
	}
	return 128 << m
}

// MTUFromBytes maps 256..4096 to an MTU; ok is false for other sizes.
func MTUFromBytes(n int) (MTU, bool) {
	for m := MTU256; m <= MTU4096; m++ {
		if m.Bytes() == n {
			return m, true
		}
	}
	return 0, false
}

// LinkLayer is the port's link layer.
type LinkLayer uint8

// Link layers (IBV_LINK_LAYER_*).
const (
	LinkUnspecified LinkLayer = 0
	LinkInfiniBand  LinkLayer = 1
	LinkEthernet    LinkLayer = 2
)

// DeviceAttr holds the ibv_device_attr fields the transport uses.
type DeviceAttr struct {
	MaxMRSize       uint64
	MaxQP           int
	MaxQPWR         int
	MaxSGE          int
	MaxCQ           int
	MaxCQE          int
	MaxMR           int
	MaxQPRdAtom     int
	MaxQPInitRdAtom int
	PhysPortCnt     int
	// NumCompVectors is ibv_context.num_comp_vectors.
	NumCompVectors int
}

// PortAttr holds the ibv_port_attr fields the transport uses.
type PortAttr struct {
	State     PortState
	MaxMTU    MTU
	ActiveMTU MTU
	GIDTblLen int
	LID       uint16
	LinkLayer LinkLayer
}

// GID is a 16-byte port GID.
type GID [16]byte

// String formats g as Mooncake does in descriptors: 16 lower-case hex bytes
// joined by ':'.
func (g GID) String() string {
	var b strings.Builder
	for i, c := range g {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(hex.EncodeToString([]byte{c}))
	}
	return b.String()
}

// IsZero reports the null GID.
func (g GID) IsZero() bool { return g == GID{} }

// IPv4Mapped reports a ::ffff:a.b.c.d GID (RoCE v2 over IPv4).
func (g GID) IPv4Mapped() bool {
	for _, c := range g[:10] {
		if c != 0 {
			return false
		}
	}
	return g[10] == 0xff && g[11] == 0xff
}

// ParseGID parses the descriptor form ("xx:xx:...", 16 bytes). It also
// accepts sysfs's eight groups of four hex digits.
func ParseGID(s string) (GID, error) {
	var g GID
	parts := strings.Split(s, ":")
	var raw string
	switch len(parts) {
	case 16:
		for _, p := range parts {
			if len(p) != 2 {
				return g, fmt.Errorf("gid %q: want 16 hex bytes", s)
			}
		}
		raw = strings.Join(parts, "")
	case 8:
		for _, p := range parts {
			if len(p) != 4 {
				return g, fmt.Errorf("gid %q: want 8 groups of 4 hex digits", s)
			}
		}
		raw = strings.Join(parts, "")
	default:
		return g, fmt.Errorf("gid %q: want 16 hex bytes joined by ':'", s)
	}
	b, err := hex.DecodeString(raw)
	if err != nil {
		return g, fmt.Errorf("gid %q: %w", s, err)
	}
	copy(g[:], b)
	return g, nil
}

// GIDType is ibv_gid_type.
type GIDType uint32

// GID types.
const (
	GIDTypeIB     GIDType = 0
	GIDTypeRoCEv1 GIDType = 1
	GIDTypeRoCEv2 GIDType = 2
)

func (t GIDType) String() string {
	switch t {
	case GIDTypeIB:
		return "IB"
	case GIDTypeRoCEv1:
		return "RoCE v1"
	case GIDTypeRoCEv2:
		return "RoCE v2"
	}
	return fmt.Sprintf("GIDType(%d)", uint32(t))
}

// GIDEntry is one GID table entry (ibv_gid_entry).
type GIDEntry struct {
	GID   GID
	Index int
	Type  GIDType
	// NetdevIfindex is the ifindex of the entry's network device, 0 when
	// it has none.
	NetdevIfindex int
}

// Access is ibv_access_flags.
type Access uint32

// Access flags.
const (
	AccessLocalWrite        Access = 1
	AccessRemoteWrite       Access = 1 << 1
	AccessRemoteRead        Access = 1 << 2
	AccessRemoteAtomic      Access = 1 << 3
	AccessRelaxedOrdering   Access = 1 << 20
	accessOptionalRangeMask Access = 0x3ff << 20
)

// Optional reports flags in the optional range, which need
// ibv_reg_mr_iova2.
func (a Access) Optional() bool { return a&accessOptionalRangeMask != 0 }

// QPState is ibv_qp_state.
type QPState uint32

// QP states.
const (
	QPSReset QPState = 0
	QPSInit  QPState = 1
	QPSRTR   QPState = 2
	QPSRTS   QPState = 3
	QPSSQD   QPState = 4
	QPSSQE   QPState = 5
	QPSErr   QPState = 6
)

func (s QPState) String() string {
	switch s {
	case QPSReset:
		return "RESET"
	case QPSInit:
		return "INIT"
	case QPSRTR:
		return "RTR"
	case QPSRTS:
		return "RTS"
	case QPSSQD:
		return "SQD"
	case QPSSQE:
		return "SQE"
	case QPSErr:
		return "ERR"
	}
	return fmt.Sprintf("QPState(%d)", uint32(s))
}

// QPAttrMask is ibv_qp_attr_mask.
type QPAttrMask uint32

// Attribute mask bits.
const (
	MaskState           QPAttrMask = 1 << 0
	MaskAccessFlags     QPAttrMask = 1 << 3
	MaskPKeyIndex       QPAttrMask = 1 << 4
	MaskPort            QPAttrMask = 1 << 5
	MaskAV              QPAttrMask = 1 << 7
	MaskPathMTU         QPAttrMask = 1 << 8
	MaskTimeout         QPAttrMask = 1 << 9
	MaskRetryCnt        QPAttrMask = 1 << 10
	MaskRNRRetry        QPAttrMask = 1 << 11
	MaskRQPSN           QPAttrMask = 1 << 12
	MaskMaxQPRdAtomic   QPAttrMask = 1 << 13
	MaskMinRNRTimer     QPAttrMask = 1 << 15
	MaskSQPSN           QPAttrMask = 1 << 16
	MaskMaxDestRdAtomic QPAttrMask = 1 << 17
	MaskDestQPN         QPAttrMask = 1 << 20
)

// AHAttr is ibv_ah_attr with its ibv_global_route.
type AHAttr struct {
	DGID         GID
	FlowLabel    uint32
	SGIDIndex    uint8
	HopLimit     uint8
	TrafficClass uint8
	DLID         uint16
	SL           uint8
	SrcPathBits  uint8
	StaticRate   uint8
	IsGlobal     bool
	PortNum      uint8
}

// QPAttr holds the ibv_qp_attr fields an RC connection sets.
type QPAttr struct {
	State           QPState
	PathMTU         MTU
	RQPSN           uint32
	SQPSN           uint32
	DestQPN         uint32
	AccessFlags     Access
	AH              AHAttr
	PKeyIndex       uint16
	MaxRdAtomic     uint8
	MaxDestRdAtomic uint8
	MinRNRTimer     uint8
	PortNum         uint8
	Timeout         uint8
	RetryCnt        uint8
	RNRRetry        uint8
}

// QPInit creates an RC queue pair.
type QPInit struct {
	SendCQ, RecvCQ CQ
	MaxSendWR      uint32
	MaxRecvWR      uint32
	MaxSendSGE     uint32
	MaxRecvSGE     uint32
	MaxInline      uint32
	// SigAll signals every work request (sq_sig_all); PostSend signals each
	// request anyway.
	SigAll bool
}

// WROpcode is ibv_wr_opcode (only RDMA READ and WRITE are used).
type WROpcode uint32

// Work request opcodes.
const (
	WRRDMAWrite WROpcode = 0
	WRRDMARead  WROpcode = 4
)

// SendWR is one signaled RDMA READ or WRITE with one SGE. Its layout is the
// C side's struct mcv_flat_wr; do not reorder.
type SendWR struct {
	WRID       uint64
	LocalAddr  uint64
	RemoteAddr uint64
	Length     uint32
	LKey       uint32
	RKey       uint32
	Opcode     WROpcode
}

// WC is one work completion: the ibv_wc fields the transport reads. Its
// layout is the C side's struct mcv_flat_wc; do not reorder.
type WC struct {
	WRID      uint64
	Status    WCStatus
	Opcode    uint32
	VendorErr uint32
	ByteLen   uint32
	QPNum     uint32
	_         uint32
}

// EventType is ibv_event_type.
type EventType uint32

// Async event types.
const (
	EventCQErr         EventType = 0
	EventQPFatal       EventType = 1
	EventQPReqErr      EventType = 2
	EventQPAccessErr   EventType = 3
	EventCommEst       EventType = 4
	EventSQDrained     EventType = 5
	EventPathMig       EventType = 6
	EventPathMigErr    EventType = 7
	EventDeviceFatal   EventType = 8
	EventPortActive    EventType = 9
	EventPortErr       EventType = 10
	EventLIDChange     EventType = 11
	EventPKeyChange    EventType = 12
	EventSMChange      EventType = 13
	EventSRQErr        EventType = 14
	EventSRQLimit      EventType = 15
	EventQPLastWQE     EventType = 16
	EventClientRereg   EventType = 17
	EventGIDChange     EventType = 18
	EventWQFatal       EventType = 19
	eventTypeNameCount           = 20
)

var eventNames = [eventTypeNameCount]string{
	"CQ_ERR", "QP_FATAL", "QP_REQ_ERR", "QP_ACCESS_ERR", "COMM_EST", "SQ_DRAINED",
	"PATH_MIG", "PATH_MIG_ERR", "DEVICE_FATAL", "PORT_ACTIVE", "PORT_ERR", "LID_CHANGE",
	"PKEY_CHANGE", "SM_CHANGE", "SRQ_ERR", "SRQ_LIMIT_REACHED", "QP_LAST_WQE_REACHED",
	"CLIENT_REREGISTER", "GID_CHANGE", "WQ_FATAL",
}

func (e EventType) String() string {
	if int(e) < len(eventNames) {
		return eventNames[e]
	}
	return fmt.Sprintf("EventType(%d)", uint32(e))
}

// AsyncEvent is one ibv_async_event, already acknowledged.
type AsyncEvent struct {
	Type EventType
	// Port is set for port events.
	Port int
	// QPNum is set for QP events.
	QPNum uint32
}

// WCStatus is ibv_wc_status. Every value but WCSuccess is an error.
type WCStatus uint32

// Completion statuses.
const (
	WCSuccess         WCStatus = 0
	WCLocLenErr       WCStatus = 1
	WCLocQPOpErr      WCStatus = 2
	WCLocEECOpErr     WCStatus = 3
	WCLocProtErr      WCStatus = 4
	WCWRFlushErr      WCStatus = 5
	WCMWBindErr       WCStatus = 6
	WCBadRespErr      WCStatus = 7
	WCLocAccessErr    WCStatus = 8
	WCRemInvReqErr    WCStatus = 9
	WCRemAccessErr    WCStatus = 10
	WCRemOpErr        WCStatus = 11
	WCRetryExcErr     WCStatus = 12
	WCRNRRetryExcErr  WCStatus = 13
	WCLocRDDViolErr   WCStatus = 14
	WCRemInvRdReqErr  WCStatus = 15
	WCRemAbortErr     WCStatus = 16
	WCInvEECNErr      WCStatus = 17
	WCInvEECStateErr  WCStatus = 18
	WCFatalErr        WCStatus = 19
	WCRespTimeoutErr  WCStatus = 20
	WCGeneralErr      WCStatus = 21
	WCTMErr           WCStatus = 22
	WCTMRndvIncomplet WCStatus = 23
)

// Texts as ibv_wc_status_str's, usable before libibverbs is loaded.
var wcStatusText = [...]string{
	"success", "local length error", "local QP operation error", "local EE context operation error",
	"local protection error", "Work Request Flushed Error", "memory management operation error",
	"bad response error", "local access error", "remote invalid request error", "remote access error",
	"remote operation error", "transport retry counter exceeded", "RNR retry counter exceeded",
	"local RDD violation error", "remote invalid RD request", "aborted error", "invalid EE context number",
	"invalid EE context state", "fatal error", "response timeout error", "general error",
	"TM error", "TM software rendezvous",
}

// Error is ibv_wc_status_str's text and the numeric status.
func (s WCStatus) Error() string {
	if int(s) < len(wcStatusText) {
		return fmt.Sprintf("%s (wc status %d)", wcStatusText[s], uint32(s))
	}
	return fmt.Sprintf("unknown wc status %d", uint32(s))
}
