// The pass over a message body that bounds what decoding it may allocate.
package wire

import (
	"encoding/binary"
	"fmt"
)

// maxDepth is the deepest nesting of arrays and maps a body may have. The
// deepest field known, a metadata entry in a state, is at depth 4
// (state, records, record, metadata); the rest leaves room for fields a
// later version may append.
const maxDepth = 8

// scanner walks a msgpack body without allocating, before the codec
// decodes it. It checks that the body is one well-formed value with
// nothing after it, nested at most maxDepth deep, with every declared
// length within the bytes that remain, strings where the codec decodes
// strings, and at most the limit's number of entries in every collection
// the codec would allocate: metadata, non-idempotent methods, heartbeats
// and records. So the codec allocates in proportion to the body, and never
// more than the limits allow, whatever lengths the body declares. The
// scanner checks only what bounds allocation; Validate decides the rest.
type scanner struct {
	b   []byte
	off int
	l   *Limits
}

// kind is a msgpack value's kind as the scanner tells them apart.
type kind uint8

const (
	kindNil    kind = iota
	kindScalar      // bool, integer or float, consumed whole
	kindString      // str or bin, consumed whole
	kindArray       // header consumed, elements not
	kindMap         // header consumed, entries not
)

// message checks a body of type t.
func (s *scanner) message(t MsgType) error {
	var err error
	switch t {
	case MsgRecord:
		err = s.record(1)
	case MsgHeartbeats:
		err = s.batch()
	case MsgState:
		err = s.state()
	case MsgClaims:
		err = s.claimBatch()
	case MsgLeave:
		err = s.leave()
	case MsgBeats:
		err = s.beats()
	case MsgWant:
		err = s.want()
	}
	if err == nil && s.off != len(s.b) {
		err = s.malformed("%d bytes after the message", len(s.b)-s.off)
	}
	return err
}

// record checks a Record at nesting level depth.
func (s *scanner) record(depth int) error {
	n, err := s.structHeader("record")
	for i := 0; i < n && err == nil; i++ {
		switch i {
		case 0, 1, 2, 3: // Service, ID, Node, Addr
			err = s.str()
		case 6:
			err = s.strMap("Meta", s.l.MaxMetaEntries)
		case 12:
			err = s.strArray("NonIdempotent", s.l.MaxNonIdempotent)
		case 17:
			err = s.strMap("Endpoints", MaxEndpoints)
		default:
			err = s.skip(depth + 1)
		}
	}
	return err
}

// batch checks a HeartbeatBatch body.
func (s *scanner) batch() error {
	n, err := s.structHeader("heartbeat batch")
	for i := 0; i < n && err == nil; i++ {
		switch i {
		case 0: // Node
			err = s.str()
		case 2:
			var beats int
			beats, err = s.collection(kindArray, "Beats", s.l.MaxBeats)
			for j := 0; j < beats && err == nil; j++ {
				err = s.beat()
			}
		default:
			err = s.skip(2)
		}
	}
	return err
}

// beat checks a Heartbeat in a batch (nesting level 3).
func (s *scanner) beat() error {
	n, err := s.structHeader("heartbeat")
	for i := 0; i < n && err == nil; i++ {
		if i < 2 { // Service, ID
			err = s.str()
		} else {
			err = s.skip(4)
		}
	}
	return err
}

// claimBatch checks a ClaimBatch body.
func (s *scanner) claimBatch() error {
	n, err := s.structHeader("claim batch")
	for i := 0; i < n && err == nil; i++ {
		switch i {
		case 0: // Node
			err = s.str()
		case 1:
			err = s.claims(s.l.MaxClaims)
		default:
			err = s.skip(2)
		}
	}
	return err
}

// claims checks an array of at most limit claims (nesting level 2).
func (s *scanner) claims(limit int) error {
	n, err := s.collection(kindArray, "Claims", limit)
	for j := 0; j < n && err == nil; j++ {
		var fields int
		fields, err = s.structHeader("claim")
		for i := 0; i < fields && err == nil; i++ {
			if i < 4 { // Resource, Service, ID, Node
				err = s.str()
			} else {
				err = s.skip(4)
			}
		}
	}
	return err
}

// leave checks a Leave body.
func (s *scanner) leave() error {
	n, err := s.structHeader("leave")
	for i := 0; i < n && err == nil; i++ {
		if i < 2 { // Node, Addr
			err = s.str()
		} else {
			err = s.skip(2)
		}
	}
	return err
}

// state checks a State body.
func (s *scanner) state() error {
	n, err := s.structHeader("state")
	for i := 0; i < n && err == nil; i++ {
		switch i {
		case 0: // Node
			err = s.str()
		case 1:
			var recs int
			recs, err = s.collection(kindArray, "Records", s.l.MaxStateRecords)
			for j := 0; j < recs && err == nil; j++ {
				err = s.record(3)
			}
		case 2:
			err = s.claims(s.l.MaxStateClaims)
		default:
			err = s.skip(2)
		}
	}
	return err
}

// structHeader reads the array header of a struct (the codec encodes
// structs as arrays) and returns its number of fields. Older senders may
// send fewer fields, newer ones more.
func (s *scanner) structHeader(what string) (int, error) {
	k, n, err := s.head()
	if err == nil && k != kindArray {
		err = s.malformed("%s is not an array", what)
	}
	return n, err
}

// collection reads the header of an array or map (of kind k, or nil) that
// the codec allocates for, and returns its length, at most limit.
func (s *scanner) collection(k kind, field string, limit int) (int, error) {
	got, n, err := s.head()
	switch {
	case err != nil:
		return 0, err
	case got == kindNil:
		return 0, nil
	case got != k:
		return 0, s.malformed("%s has the wrong type", field)
	case n > limit:
		return 0, fmt.Errorf("%w: %v", ErrInvalid, tooMany(field, n, limit))
	}
	return n, nil
}

// strMap checks a map of strings to strings with at most limit entries.
func (s *scanner) strMap(field string, limit int) error {
	n, err := s.collection(kindMap, field, limit)
	for i := 0; i < 2*n && err == nil; i++ {
		err = s.str()
	}
	return err
}

// strArray checks an array of strings with at most limit elements.
func (s *scanner) strArray(field string, limit int) error {
	n, err := s.collection(kindArray, field, limit)
	for i := 0; i < n && err == nil; i++ {
		err = s.str()
	}
	return err
}

// str checks a value the codec decodes into a Go string.
func (s *scanner) str() error {
	k, _, err := s.head()
	if err == nil && k != kindString && k != kindNil {
		err = s.malformed("want a string")
	}
	return err
}

// skip checks and passes over any value, which is at nesting level depth
// if it is an array or map.
func (s *scanner) skip(depth int) error {
	k, n, err := s.head()
	if err != nil || (k != kindArray && k != kindMap) {
		return err
	}
	if depth > maxDepth {
		return s.malformed("nested deeper than %d", maxDepth)
	}
	if k == kindMap {
		n *= 2
	}
	for i := 0; i < n && err == nil; i++ {
		err = s.skip(depth + 1)
	}
	return err
}

// head reads the type byte of the next value and the length that follows.
// It consumes scalars and strings whole and returns a string's length, an
// array's element count or a map's entry count; every length is checked
// against the bytes left (each element takes at least one byte, each map
// entry two). Extension types, which Aegis never sends, are refused.
func (s *scanner) head() (kind, int, error) {
	if s.off >= len(s.b) {
		return 0, 0, s.malformed("truncated")
	}
	c := s.b[s.off]
	s.off++
	switch {
	case c <= 0x7f || c >= 0xe0: // positive and negative fixint
		return kindScalar, 0, nil
	case c <= 0x8f:
		return s.sized(kindMap, uint64(c&0x0f))
	case c <= 0x9f:
		return s.sized(kindArray, uint64(c&0x0f))
	case c <= 0xbf:
		return s.sized(kindString, uint64(c&0x1f))
	}
	switch c {
	case 0xc0:
		return kindNil, 0, nil
	case 0xc2, 0xc3:
		return kindScalar, 0, nil
	case 0xc4, 0xd9, 0xc5, 0xda, 0xc6, 0xdb: // bin and str, 8/16/32-bit lengths
		return s.lengthThen(kindString, c)
	case 0xdc, 0xdd:
		return s.lengthThen(kindArray, c)
	case 0xde, 0xdf:
		return s.lengthThen(kindMap, c)
	case 0xcc, 0xd0:
		return kindScalar, 0, s.consume(1)
	case 0xcd, 0xd1:
		return kindScalar, 0, s.consume(2)
	case 0xca, 0xce, 0xd2:
		return kindScalar, 0, s.consume(4)
	case 0xcb, 0xcf, 0xd3:
		return kindScalar, 0, s.consume(8)
	}
	return 0, 0, s.malformed("type byte 0x%02x not used by this protocol", c)
}

// lengthThen reads the big-endian length that follows type byte c, whose
// width the byte implies.
func (s *scanner) lengthThen(k kind, c byte) (kind, int, error) {
	var width int
	switch c {
	case 0xc4, 0xd9:
		width = 1
	case 0xc5, 0xda, 0xdc, 0xde:
		width = 2
	default:
		width = 4
	}
	if err := s.consume(width); err != nil {
		return 0, 0, err
	}
	var buf [8]byte
	copy(buf[8-width:], s.b[s.off-width:s.off])
	return s.sized(k, binary.BigEndian.Uint64(buf[:]))
}

// sized checks length n of a value of kind k against the bytes left and,
// for a string, consumes it.
func (s *scanner) sized(k kind, n uint64) (kind, int, error) {
	need := n
	if k == kindMap {
		need = 2 * n
	}
	if left := uint64(len(s.b) - s.off); need > left {
		return 0, 0, s.malformed("declares length %d with %d bytes left", n, left)
	}
	if k == kindString {
		s.off += int(n)
	}
	return k, int(n), nil
}

func (s *scanner) consume(n int) error {
	if len(s.b)-s.off < n {
		return s.malformed("truncated")
	}
	s.off += n
	return nil
}

// malformed returns an error wrapping ErrMalformed that gives the
// position in the framed message.
func (s *scanner) malformed(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrMalformed, frameSize+s.off, fmt.Sprintf(format, args...))
}
