// Encoded sizes of messages, computed without encoding them.
package wire

import "math"

// The sizes follow the codec's msgpack encoder as configured in handle:
// the shortest form of every integer and length, str8 allowed, signed
// integers encoded as signed, nil maps and slices as nil.

// frameSize is the version and type bytes in front of every body.
const frameSize = 2

// recordSize returns len(Encode(r)).
func recordSize(r *Record) int {
	n := frameSize + arrayHeaderSize(13)
	n += strSize(r.Service) + strSize(r.ID) + strSize(r.Node) + strSize(r.Addr)
	n += uintSize(uint64(r.Role)) + uintSize(uint64(r.Status))
	if r.Meta == nil {
		n++
	} else {
		n += mapHeaderSize(len(r.Meta))
		for k, v := range r.Meta {
			n += strSize(k) + strSize(v)
		}
	}
	n += intSize(r.Incarnation) + uintSize(r.Seq) + intSize(r.Time)
	n += 2 // Deleted, Heartbeats
	return n + strsSize(r.NonIdempotent)
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
		n += arrayHeaderSize(5) + strSize(h.Service) + strSize(h.ID) +
			intSize(h.Incarnation) + uintSize(h.Seq) + uintSize(uint64(h.Status))
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

func strSize(s string) int {
	switch l := len(s); {
	case l < 32:
		return 1 + l
	case l < 256:
		return 2 + l
	case l < 65536:
		return 3 + l
	default:
		return 5 + l
	}
}

func arrayHeaderSize(n int) int {
	switch {
	case n < 16:
		return 1
	case n < 65536:
		return 3
	default:
		return 5
	}
}

// mapHeaderSize equals arrayHeaderSize: msgpack has fixmap, map16 and
// map32, like arrays.
func mapHeaderSize(n int) int { return arrayHeaderSize(n) }

func uintSize(v uint64) int {
	switch {
	case v <= math.MaxInt8:
		return 1
	case v <= math.MaxUint8:
		return 2
	case v <= math.MaxUint16:
		return 3
	case v <= math.MaxUint32:
		return 5
	default:
		return 9
	}
}

func intSize(v int64) int {
	switch {
	case v >= -32 && v <= math.MaxInt8:
		return 1
	case v > math.MaxInt8:
		switch {
		case v <= math.MaxInt16:
			return 3
		case v <= math.MaxInt32:
			return 5
		}
		return 9
	case v >= math.MinInt8:
		return 2
	case v >= math.MinInt16:
		return 3
	case v >= math.MinInt32:
		return 5
	default:
		return 9
	}
}
