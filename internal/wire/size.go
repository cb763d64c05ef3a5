// Encoded sizes of messages, computed without encoding them.
package wire

import (
	"math"

	"github.com/aegisipc/aegis/internal/msgpsize"
)

// The sizes follow the codec's msgpack encoder as configured in handle:
// the shortest form of every integer and length, str8 allowed, signed
// integers encoded as signed, nil maps and slices as nil.

// frameSize is the version and type bytes in front of every body.
const frameSize = 2

// recordSize returns len(Encode(r)).
func recordSize(r *Record) int {
	n := frameSize + arrayHeaderSize(20)
	n += strSize(r.Service) + strSize(r.ID) + strSize(r.Node) + strSize(r.Addr)
	n += uintSize(uint64(r.Role)) + uintSize(uint64(r.Status))
	n += strMapSize(r.Meta)
	n += intSize(r.Incarnation) + uintSize(r.Seq) + intSize(r.Time)
	n += 2 // Deleted, Heartbeats
	n += strsSize(r.NonIdempotent)
	n += strSize(r.Group) + intSize(int64(r.Priority)) + uintSize(uint64(r.Promotion)) + uintSize(r.Epoch)
	return n + strMapSize(r.Endpoints) + uintSize(r.Life) + uintSize(uint64(r.Index))
}

func strMapSize(m map[string]string) int {
	if m == nil {
		return 1
	}
	n := mapHeaderSize(len(m))
	for k, v := range m {
		n += strSize(k) + strSize(v)
	}
	return n
}

// batchSize returns len(Encode(b)).
func batchSize(b *HeartbeatBatch) int {
	n := frameSize + arrayHeaderSize(3) + strSize(b.Node) + intSize(b.Time)
	if b.Beats == nil {
		return n + 1
	}
	n += arrayHeaderSize(len(b.Beats))
	for i := range b.Beats {
		h := &b.Beats[i]
		n += arrayHeaderSize(7) + strSize(h.Service) + strSize(h.ID) +
			intSize(h.Incarnation) + uintSize(h.Seq) + uintSize(uint64(h.Status)) +
			uintSize(uint64(h.Role)) + uintSize(h.Epoch)
	}
	return n
}

func strsSize(ss []string) int {
	if ss == nil {
		return 1
	}
	n := arrayHeaderSize(len(ss))
	for _, s := range ss {
		n += strSize(s)
	}
	return n
}

func strSize(s string) int { return msgpsize.Str(len(s)) }

func arrayHeaderSize(n int) int { return msgpsize.Container(n) }

func mapHeaderSize(n int) int { return msgpsize.Container(n) }

func uintSize(v uint64) int { return msgpsize.Uint(v) }

func intSize(v int64) int {
	switch {
	case v < 0:
		return msgpsize.Neg(v)
	case v <= math.MaxInt8:
		return 1
	case v <= math.MaxInt16:
		return 3
	case v <= math.MaxInt32:
		return 5
	default:
		return 9
	}
}
