// Package wire defines the gossip messages Aegis nodes exchange through
// memberlist and their encoding: a version byte, a type byte, then a
// go-msgpack body.
package wire

import (
	"errors"
	"fmt"

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
	Status      uint8
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
}

// Heartbeat says an instance is alive and what status it reports.
type Heartbeat struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Service     string
	ID          string
	Incarnation int64
	Seq         uint64
	Status      uint8
}

// HeartbeatBatch carries heartbeats of instances hosted by one node, sent
// at one moment.
type HeartbeatBatch struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Node  string
	Time  int64 // origin's clock when sent (unix ns); informational only
	Beats []Heartbeat
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
	return h
}()

// Encode returns the framed encoding of v, which must be a *Record,
// *HeartbeatBatch or *State.
func Encode(v any) ([]byte, error) {
	var t MsgType
	switch v.(type) {
	case *Record:
		t = MsgRecord
	case *HeartbeatBatch:
		t = MsgHeartbeats
	case *State:
		t = MsgState
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
}

// Decode parses a framed message. It never panics on bad input and returns
// an error wrapping ErrTruncated, ErrUnknownVersion, ErrUnknownType or
// ErrMalformed.
func Decode(b []byte) (msg Message, err error) {
	if len(b) < 2 {
		return Message{}, fmt.Errorf("%w: %d bytes", ErrTruncated, len(b))
	}
	if b[0] != Version {
		return Message{}, fmt.Errorf("%w: %d (this node speaks %d)", ErrUnknownVersion, b[0], Version)
	}
	msg.Type = MsgType(b[1] &^ FlagDirect)
	msg.Direct = b[1]&FlagDirect != 0
	var target any
	switch msg.Type {
	case MsgRecord:
		msg.Record = new(Record)
		target = msg.Record
	case MsgHeartbeats:
		msg.Heartbeats = new(HeartbeatBatch)
		target = msg.Heartbeats
	case MsgState:
		msg.State = new(State)
		target = msg.State
	default:
		return Message{}, fmt.Errorf("%w: %d", ErrUnknownType, b[1])
	}
	defer func() {
		// The codec may panic on pathological input; a gossip message must
		// never take a node down.
		if r := recover(); r != nil {
			msg, err = Message{}, fmt.Errorf("%w: %v", ErrMalformed, r)
		}
	}()
	dec := codec.NewDecoderBytes(b[2:], handle)
	if err := dec.Decode(target); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return msg, nil
}
