// Compact heartbeats: one message per node per round naming its instances
// by the short index their records carry.
package wire

import (
	"encoding/binary"
	"fmt"
	"math"
)

// MsgBeats carries compact heartbeats (Beats) of one node's instances.
const MsgBeats MsgType = 6

// MaxIndex is the largest instance index (Record.Index) accepted.
const MaxIndex uint32 = 1<<31 - 1

// MaxPackedPerMessage bounds the packed beats of one compact message a
// node sends, so that the message fits a gossip packet beside other
// broadcasts: a round's beats that do not fit go in further messages.
const MaxPackedPerMessage = 600

// Beats is the compact heartbeat message: a node's heartbeats for the
// instances whose records carry its Life and their Index. A receiver
// without such a record cannot apply that beat (it pulls the records from
// the sender instead). Packed holds the beats, ascending by index, each
// as a head byte (status in bits 0–2, role in bits 3–4, bit 5: an epoch
// follows, bit 6: a sequence delta follows, bit 7 zero), the index's
// distance from the previous one (the first: the index itself) as a
// uvarint, then the optional sequence number as a zig-zag varint
// difference from the previous beat's (the first: from 0; absent: equal)
// and the optional epoch as a uvarint (absent: 0). A node numbers the
// heartbeats of one round alike, so a beat usually takes two bytes. There
// is no send time (Record.Time is informational; a compact heartbeat
// leaves it as it was). Round numbers the sender's heartbeat rounds (0:
// not given); the messages of one round share it, and a receiver keeps the
// newest round's messages to hand on to a member that missed them (Want).
type Beats struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Node   string
	Life   uint64 // the sender's life: random, fixed while it runs, never 0
	Packed []byte
	Round  uint64

	// Entries is Packed decoded; DecodeLimited fills it, Encode ignores
	// it (use PackBeats).
	Entries []Beat `codec:"-"`
}

// Beat is one instance's heartbeat in a Beats message.
type Beat struct {
	Index  uint32
	Seq    uint64
	Status uint8
	Role   uint8
	Epoch  uint64
}

const (
	beatEpoch = 1 << 5
	beatSeq   = 1 << 6
	beatBad   = 1 << 7
)

// PackBeats encodes beats, which must be ascending by Index, for
// Beats.Packed; the caller checks their ranges.
func PackBeats(beats []Beat) []byte {
	p, _ := PackBeatsLimit(beats, math.MaxInt)
	return p
}

// PackBeatsLimit encodes the longest prefix of beats (at least one) whose
// encoding fits limit bytes, and returns it with the prefix's length.
func PackBeatsLimit(beats []Beat, limit int) ([]byte, int) {
	out := make([]byte, 0, min(2*len(beats)+8, limit))
	var prev Beat
	for i, b := range beats {
		next := appendBeat(out, b, prev)
		if i > 0 && len(next) > limit {
			return out, i
		}
		out, prev = next, b
	}
	return out, len(beats)
}

// appendBeat appends b, following prev, to out.
func appendBeat(out []byte, b, prev Beat) []byte {
	head := b.Status&7 | (b.Role&3)<<3
	if b.Epoch != 0 {
		head |= beatEpoch
	}
	if b.Seq != prev.Seq {
		head |= beatSeq
	}
	out = append(out, head)
	out = binary.AppendUvarint(out, uint64(b.Index-prev.Index))
	if b.Seq != prev.Seq {
		out = binary.AppendVarint(out, int64(b.Seq-prev.Seq))
	}
	if b.Epoch != 0 {
		out = binary.AppendUvarint(out, b.Epoch)
	}
	return out
}

// unpackBeats decodes p, at most limit beats. Indexes must ascend within
// 1..MaxIndex, sequence numbers stay within 1..MaxSeq, epochs within
// MaxEpoch, statuses and roles known values.
func unpackBeats(p []byte, limit int) ([]Beat, error) {
	var out []Beat
	var prev Beat
	for off := 0; off < len(p); {
		if len(out) >= limit {
			return nil, fmt.Errorf("%w: more than %d beats", ErrInvalid, limit)
		}
		b, n, err := unpackBeat(p[off:], prev)
		if err != nil {
			return nil, fmt.Errorf("beat %d: %w", len(out), err)
		}
		out = append(out, b)
		prev, off = b, off+n
	}
	return out, nil
}

// unpackBeat decodes the beat at the start of p, following prev, and
// returns it with its length.
func unpackBeat(p []byte, prev Beat) (Beat, int, error) {
	head := p[0]
	b := Beat{Status: head & 7, Role: (head >> 3) & 3, Seq: prev.Seq}
	switch {
	case head&beatBad != 0:
		return b, 0, fmt.Errorf("%w: head byte %#x", ErrMalformed, head)
	case b.Status > maxStatus || b.Role > maxRole:
		return b, 0, fmt.Errorf("%w: status %d, role %d", ErrInvalid, b.Status, b.Role)
	}
	off := 1
	d, n := binary.Uvarint(p[off:])
	if n <= 0 || d == 0 || d > uint64(MaxIndex-prev.Index) {
		return b, 0, fmt.Errorf("%w: bad index distance", ErrInvalid)
	}
	b.Index, off = prev.Index+uint32(d), off+n
	if head&beatSeq != 0 {
		delta, n := binary.Varint(p[off:])
		seq := prev.Seq + uint64(delta)
		if n <= 0 || delta == 0 || (delta < 0) != (seq < prev.Seq) || seq == 0 || seq > MaxSeq {
			return b, 0, fmt.Errorf("%w: bad sequence delta", ErrInvalid)
		}
		b.Seq, off = seq, off+n
	}
	if b.Seq == 0 {
		return b, 0, fmt.Errorf("%w: sequence number 0", ErrInvalid)
	}
	if head&beatEpoch != 0 {
		e, n := binary.Uvarint(p[off:])
		if n <= 0 || e == 0 || e > MaxEpoch {
			return b, 0, fmt.Errorf("%w: bad epoch", ErrInvalid)
		}
		b.Epoch, off = e, off+n
	}
	return b, off, nil
}

// Validate reports whether b may be applied: Node is a valid node name,
// Life is not 0 and the entries were unpacked (DecodeLimited checked
// their ranges). The error wraps ErrInvalid.
func (b *Beats) Validate() error {
	switch {
	case !ValidName(b.Node, MaxNameLen):
		return fmt.Errorf("%w: beats: Node %s: %s", ErrInvalid, clip(b.Node), nameRule)
	case b.Life == 0:
		return fmt.Errorf("%w: beats from %s: Life 0", ErrInvalid, clip(b.Node))
	case len(b.Packed) > 0 && len(b.Entries) == 0:
		return fmt.Errorf("%w: beats from %s: not unpacked", ErrInvalid, clip(b.Node))
	}
	return nil
}

// beatsScan checks a Beats body: Node and Packed are strings, the rest
// scalars.
func (s *scanner) beats() error {
	n, err := s.structHeader("beats")
	for i := 0; i < n && err == nil; i++ {
		if i == 0 || i == 2 { // Node, Packed
			err = s.str()
		} else {
			err = s.skip(2)
		}
	}
	return err
}

// MsgWant asks a member for the newest compact heartbeats it holds of the
// nodes named (Want).
const MsgWant MsgType = 7

// MaxWantOrigins is the most nodes one Want names.
const MaxWantOrigins = 32

// Want is sent by a node that missed the heartbeats it expected from some
// nodes. The member asked answers From, a live member, straight away with
// the newest Beats messages it holds of each origin named whose life
// differs or whose round is newer than the one given. A Want naming the
// very node it is sent to also asks for that node's own records: a
// receiver of heartbeats naming instances it has no record of asks their
// sender before pulling the full state of the cluster.
type Want struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	From    string
	Origins []WantOrigin
}

// WantOrigin names a node whose heartbeats are missed, with the life and
// round of the newest of its messages the asking node has.
type WantOrigin struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Node  string
	Life  uint64
	Round uint64
}

// Validate reports whether w may be acted on: From and every origin are
// valid node names, at most MaxWantOrigins of them. The error wraps
// ErrInvalid.
func (w *Want) Validate() error {
	if !ValidName(w.From, MaxNameLen) {
		return fmt.Errorf("%w: want: From %s: %s", ErrInvalid, clip(w.From), nameRule)
	}
	if len(w.Origins) == 0 || len(w.Origins) > MaxWantOrigins {
		return fmt.Errorf("%w: want from %s: %d origins (1 to %d)", ErrInvalid, clip(w.From), len(w.Origins), MaxWantOrigins)
	}
	for i := range w.Origins {
		if !ValidName(w.Origins[i].Node, MaxNameLen) {
			return fmt.Errorf("%w: want from %s: Origins[%d]: %s", ErrInvalid, clip(w.From), i, nameRule)
		}
	}
	return nil
}

// want checks a Want body.
func (s *scanner) want() error {
	n, err := s.structHeader("want")
	for i := 0; i < n && err == nil; i++ {
		switch i {
		case 0: // From
			err = s.str()
		case 1:
			var k int
			k, err = s.collection(kindArray, "Origins", MaxWantOrigins)
			for j := 0; j < k && err == nil; j++ {
				var fields int
				fields, err = s.structHeader("want origin")
				for f := 0; f < fields && err == nil; f++ {
					if f == 0 { // Node
						err = s.str()
					} else {
						err = s.skip(4)
					}
				}
			}
		default:
			err = s.skip(2)
		}
	}
	return err
}
