// Limits on what a node accepts from the network, the version ceilings and the name rule.
package wire

import "errors"

// ErrInvalid is wrapped by every error that rejects a message for breaking
// a rule or a limit (as opposed to not being a well-formed message at all,
// ErrMalformed). The detail names the field.
var ErrInvalid = errors.New("wire: invalid message")

// Fixed bounds of the protocol; unlike Limits they are not tunable, because
// every node must agree on them.
const (
	// MaxNameLen is the longest service name, instance ID, node name,
	// metadata key and non-idempotent method name, in bytes.
	MaxNameLen = 128

	// MaxAddrLen is the longest call address: a 253-byte DNS name, a
	// colon and a 5-digit port.
	MaxAddrLen = 259

	// MaxIncarnation is the largest incarnation accepted. Incarnations are
	// the registering node's clock in unix nanoseconds (about 1.8e18 in
	// 2026); 1<<62 (about 4.6e18) is reached in the year 2116, so no honest
	// clock comes near it. A node that derives a new incarnation from one
	// it received (one more than a tombstone's) stays far from overflow:
	// int64 has another 4.6e18 above it. Such a node must still refuse to go
	// past MaxIncarnation itself, or its peers will reject the record.
	MaxIncarnation int64 = 1 << 62

	// MaxSeq is the largest sequence number accepted. Seq counts the
	// heartbeats and updates of one incarnation: at one per millisecond it
	// would take 146 million years to reach 1<<62, and uint64 has three
	// times as much again above it, so incrementing an accepted Seq never
	// wraps.
	MaxSeq uint64 = 1 << 62

	// MaxEpoch is the largest role-group epoch accepted. Epochs grow by one
	// per promotion; the bound only keeps a forged epoch from reaching a
	// value no later promotion could pass.
	MaxEpoch uint64 = 1 << 62
)

// Limits bound the messages a node accepts from its peers. A zero field
// means its default (see DefaultLimits). All nodes of a cluster should use
// the same limits: a record one node accepts and gossips, another would
// drop.
type Limits struct {
	// MaxRecordSize is the largest encoded record, its 2-byte frame
	// included, in a record message or in a state. Default 1024, the same
	// bound the root package's Register applies: a record must fit one
	// gossip packet (memberlist's UDP buffer is 1,400 bytes).
	MaxRecordSize int
	// MaxBatchSize is the largest encoded heartbeat batch, frame included.
	// Default 1400: a batch travels in one gossip packet.
	MaxBatchSize int
	// MaxBeats is the most heartbeats in a batch. Default 140, the default
	// MaxBatchSize over 10, the encoded size of the smallest valid
	// heartbeat.
	MaxBeats int
	// MaxMetaEntries is the most metadata entries in a record. Default 64.
	MaxMetaEntries int
	// MaxMetaValueLen is the longest metadata value, in bytes. Default 512.
	MaxMetaValueLen int
	// MaxNonIdempotent is the most non-idempotent methods a record lists.
	// Default 64.
	MaxNonIdempotent int
	// MaxStateRecords is the most records (live ones and tombstones) in a
	// push/pull state, that is in a node's whole registry. Default 65,536.
	// memberlist refuses states over 20 MB anyway; the count bounds what
	// decoding a state may allocate, since an empty record takes one byte
	// on the wire and about 150 in memory.
	MaxStateRecords int
	// MaxClaims is the most resource claims in a claim batch. Default 128
	// (a batch travels in one gossip packet).
	MaxClaims int
	// MaxStateClaims is the most resource claims in a push/pull state.
	// Default 131,072.
	MaxStateClaims int
}

// DefaultLimits returns the limits used when a field is zero.
func DefaultLimits() Limits {
	return Limits{
		MaxRecordSize:    1024,
		MaxBatchSize:     1400,
		MaxBeats:         1400 / minBeatSize,
		MaxMetaEntries:   64,
		MaxMetaValueLen:  512,
		MaxNonIdempotent: 64,
		MaxStateRecords:  1 << 16,
		MaxClaims:        128,
		MaxStateClaims:   1 << 17,
	}
}

// minBeatSize is the encoded size of the smallest valid heartbeat: array
// header, one-character service and ID, five one-byte integers.
const minBeatSize = 1 + 2 + 2 + 5

// orDefault returns l with zero and negative fields replaced by defaults.
func (l Limits) orDefault() Limits {
	d := DefaultLimits()
	pick := func(v, def int) int {
		if v > 0 {
			return v
		}
		return def
	}
	return Limits{
		MaxRecordSize:    pick(l.MaxRecordSize, d.MaxRecordSize),
		MaxBatchSize:     pick(l.MaxBatchSize, d.MaxBatchSize),
		MaxBeats:         pick(l.MaxBeats, d.MaxBeats),
		MaxMetaEntries:   pick(l.MaxMetaEntries, d.MaxMetaEntries),
		MaxMetaValueLen:  pick(l.MaxMetaValueLen, d.MaxMetaValueLen),
		MaxNonIdempotent: pick(l.MaxNonIdempotent, d.MaxNonIdempotent),
		MaxStateRecords:  pick(l.MaxStateRecords, d.MaxStateRecords),
		MaxClaims:        pick(l.MaxClaims, d.MaxClaims),
		MaxStateClaims:   pick(l.MaxStateClaims, d.MaxStateClaims),
	}
}

// ValidName reports whether s is 1 to maxLen bytes of letters, digits, '.',
// '_', '-' and ':'. Instance IDs, node names and metadata keys follow it
// with maxLen MaxNameLen; service names follow it too but may not contain
// ':'.
func ValidName(s string, maxLen int) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-', c == ':':
		default:
			return false
		}
	}
	return true
}
