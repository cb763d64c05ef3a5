// Package wire defines the gossip messages Aegis nodes exchange through
// memberlist and their encoding: a version byte, a type byte, then a
// go-msgpack body.
package wire

import (
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// Version is the gossip protocol version this build speaks. A message with
// another version is rejected with ErrUnknownVersion.
const Version byte = 1

// MsgType says what a gossip message carries.
type MsgType byte

// Gossip message types.
const (
	// MsgRecord carries one full instance record (registration, update or
	// tombstone).
	MsgRecord MsgType = 1
	// MsgHeartbeats carries a batch of heartbeats from one node.
	MsgHeartbeats MsgType = 2
	// MsgState carries a node's whole registry, for push/pull anti-entropy.
	MsgState MsgType = 3
	// MsgLeave says a node is leaving the cluster gracefully.
	MsgLeave MsgType = 4
)

// Errors returned by the decoder. They are wrapped with detail.
var (
	ErrTruncated      = errors.New("wire: truncated message")
	ErrUnknownVersion = errors.New("wire: unknown protocol version")
	ErrUnknownType    = errors.New("wire: unknown message type")
	ErrMalformed      = errors.New("wire: malformed message body")
)

// Record is the replicated state of one service instance, owned by the node
// that registered it. Versions are ordered by (Incarnation, Seq).
type Record struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Service     string
	ID          string
	Node        string
	Addr        string
	Role        uint8
	Status      uint8 // the instance's status; in a tombstone, why it was deleted (TombstoneDeregistered, TombstoneLeft)
	Meta        map[string]string
	Incarnation int64  // origin's registration time (unix ns); a re-registration gets a larger one
	Seq         uint64 // bumped by every heartbeat and update of this incarnation
	Time        int64  // origin's clock when this version was made (unix ns); informational only
	Deleted     bool   // tombstone: the instance was deregistered
	// Heartbeats says the instance sends heartbeats; receivers apply the
	// heartbeat timeout only to such instances.
	Heartbeats bool
	// NonIdempotent lists methods that must not run again on another
	// instance once this one may have run them.
	NonIdempotent []string
	// Group narrows an active/standby role group within the service ("" =
	// the service itself); Priority orders its standbys for promotion
	// (higher first); Promotion is the group's promotion mode (0 = with a
	// majority, 1 = always).
	Group     string
	Priority  int32
	Promotion uint8
	// Epoch is the role group's epoch at which the instance last became
	// active (0: never). Heartbeats carry it too, with Role: both change
	// while the record's other fields do not.
	Epoch uint64
	// Endpoints are addresses the instance serves other protocols on, by
	// protocol name (e.g. "grpc" → "10.0.0.5:50051").
	Endpoints map[string]string
	// Life is the hosting node's life (random, fixed while it runs) and
	// Index the instance's number there (1 up, never reused in a life;
	// 0: none): compact heartbeats (Beats) name the instance by them.
	Life  uint64
	Index uint32
}

// Why a tombstone deleted an instance, carried in its Status.
const (
	// TombstoneDeregistered: the instance was deregistered (or refuted).
	TombstoneDeregistered uint8 = 0
	// TombstoneLeft: its node left the cluster gracefully.
	TombstoneLeft uint8 = 1
)

// Heartbeat says an instance is alive and what status it reports.
type Heartbeat struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Service     string
	ID          string
	Incarnation int64
	Seq         uint64
	Status      uint8
	Role        uint8  // the instance's current role
	Epoch       uint64 // see Record.Epoch
}

// HeartbeatBatch carries heartbeats of instances hosted by one node, sent
// at one moment.
type HeartbeatBatch struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Node  string
	Time  int64 // origin's clock when sent (unix ns); informational only
	Beats []Heartbeat
}

// Leave is sent by a node that leaves the cluster gracefully, before
// memberlist's own leave message, which does not tell peers whether the
// node left or died. Addr is the node's gossip address, so that a notice
// cannot be taken for another node of the same name.
type Leave struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Node string
	Addr string
	Time int64 // origin's clock when sent (unix ns); informational only
}

// FlagDirect, set in the type byte, marks a message sent straight from its
// origin to every member (not gossiped); receivers need not re-broadcast it.
const FlagDirect byte = 0x80

// Direct returns a copy of an encoded message with FlagDirect set.
func Direct(b []byte) []byte {
	out := append([]byte(nil), b...)
	if len(out) > 1 {
		out[1] |= FlagDirect
	}
	return out
}

// State is a node's full registry (live records and tombstones).
type State struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Node    string
	Records []Record
	// Claims are resource claims and releases; a state may carry only some
	// of them (see the root package's push/pull).
	Claims []Claim
}

// Newer reports whether version (inc, seq) is newer than (oinc, oseq).
func Newer(inc int64, seq uint64, oinc int64, oseq uint64) bool {
	if inc != oinc {
		return inc > oinc
	}
	return seq > oseq
}

var handle = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.WriteExt = true
	h.RawToString = true
	// The scanner has already bounded every length in a body; these bound
	// the codec on its own as well. A declared length allocates at most
	// MaxInitLen elements up front, the rest only as elements are read.
	h.MaxInitLen = 16
	h.MaxDepth = 2 * maxDepth
	return h
}()

// Encode returns the framed encoding of v, which must be a *Record,
// *HeartbeatBatch, *State, *ClaimBatch, *Leave, *Beats or *Want.
func Encode(v any) ([]byte, error) {
	var t MsgType
	switch v.(type) {
	case *Record:
		t = MsgRecord
	case *HeartbeatBatch:
		t = MsgHeartbeats
	case *State:
		t = MsgState
	case *ClaimBatch:
		t = MsgClaims
	case *Leave:
		t = MsgLeave
	case *Beats:
		t = MsgBeats
	case *Want:
		t = MsgWant
	default:
		return nil, fmt.Errorf("wire: cannot encode %T", v)
	}
	var body []byte
	enc := codec.NewEncoderBytes(&body, handle)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("wire: encode %T: %w", v, err)
	}
	buf := make([]byte, 2, 2+len(body))
	buf[0], buf[1] = Version, byte(t)
	return append(buf, body...), nil
}

// Message is a decoded gossip message; exactly one field is set.
type Message struct {
	Type       MsgType
	Direct     bool // FlagDirect was set
	Record     *Record
	Heartbeats *HeartbeatBatch
	State      *State
	Claims     *ClaimBatch
	Leave      *Leave
	Beats      *Beats
	Want       *Want
}

// Decode is DecodeLimited with DefaultLimits.
func Decode(b []byte) (Message, error) {
	return DecodeLimited(b, DefaultLimits())
}

// DecodeLimited parses a framed message. It never panics, and it
// allocates in proportion to b and within l, whatever lengths b declares:
// a record message longer than l.MaxRecordSize or a heartbeat batch longer
// than l.MaxBatchSize is refused outright, and before the codec decodes
// the body, a pass over it that allocates nothing refuses bytes after the
// message, nesting deeper than 8, declared lengths longer than the bytes
// left, and more metadata entries, non-idempotent methods, heartbeats or
// state records than l allows. Errors wrap ErrTruncated,
// ErrUnknownVersion, ErrUnknownType, ErrMalformed, or ErrInvalid for a
// limit exceeded. A message that decodes must still pass Message.Validate
// before it is stored.
func DecodeLimited(b []byte, l Limits) (Message, error) {
	if len(b) < frameSize {
		return Message{}, fmt.Errorf("%w: %d bytes", ErrTruncated, len(b))
	}
	if b[0] != Version {
		return Message{}, fmt.Errorf("%w: %d (this node speaks %d)", ErrUnknownVersion, b[0], Version)
	}
	l = l.orDefault()
	var msg Message
	msg.Type = MsgType(b[1] &^ FlagDirect)
	msg.Direct = b[1]&FlagDirect != 0
	var target any
	limit := len(b) // a state's size is bounded by memberlist (20 MB)
	switch msg.Type {
	case MsgRecord:
		msg.Record = new(Record)
		target, limit = msg.Record, l.MaxRecordSize
	case MsgHeartbeats:
		msg.Heartbeats = new(HeartbeatBatch)
		target, limit = msg.Heartbeats, l.MaxBatchSize
	case MsgState:
		msg.State = new(State)
		target = msg.State
	case MsgClaims:
		msg.Claims = new(ClaimBatch)
		target, limit = msg.Claims, l.MaxBatchSize
	case MsgLeave:
		msg.Leave = new(Leave)
		target, limit = msg.Leave, l.MaxRecordSize
	case MsgBeats:
		msg.Beats = new(Beats)
		target, limit = msg.Beats, l.MaxBatchSize
	case MsgWant:
		msg.Want = new(Want)
		target, limit = msg.Want, l.MaxBatchSize
	default:
		return Message{}, fmt.Errorf("%w: %d", ErrUnknownType, b[1])
	}
	if len(b) > limit {
		return Message{}, fmt.Errorf("%w: %d-byte message of type %d, more than %d", ErrInvalid, len(b), msg.Type, limit)
	}
	sc := scanner{b: b[frameSize:], l: &l}
	if err := sc.message(msg.Type); err != nil {
		return Message{}, err
	}
	if err := decodeBody(b[frameSize:], target); err != nil {
		return Message{}, err
	}
	if msg.Beats != nil {
		entries, err := unpackBeats(msg.Beats.Packed, len(b))
		if err != nil {
			return Message{}, fmt.Errorf("beats: %w", err)
		}
		msg.Beats.Entries = entries
	}
	return msg, nil
}

// decodeBody decodes a msgpack body into target with the codec.
func decodeBody(body []byte, target any) (err error) {
	defer func() {
		// The codec turns its own panics into errors; this catches any
		// other, since a gossip message must never take a node down.
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %w: %v", ErrMalformed, errPanic, r)
		}
	}()
	dec, _ := decoders.Get().(*codec.Decoder)
	if dec == nil {
		dec = codec.NewDecoderBytes(body, handle)
	} else {
		dec.ResetBytes(body)
	}
	// A decoder whose Decode panicked is dropped with the panic (the
	// deferred recover runs before this line would): only one that
	// returned goes back, reset so that it does not hold body.
	err = dec.Decode(target)
	dec.ResetBytes(noBody) // ResetBytes ignores nil
	decoders.Put(dec)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// decoders reuses msgpack decoders: making one per message was a twentieth
// of a node's CPU when hundreds of records arrive at once.
var decoders sync.Pool

var noBody = []byte{}

// errPanic marks a decoding error that came from a recovered panic, so
// that the fuzz tests can tell one apart.
var errPanic = errors.New("decoder panicked")
