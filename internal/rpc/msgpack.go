// This file holds the minimal msgpack writers and the bounds-checked reader the frame codec uses.

package rpc

import (
	"encoding/binary"
	"errors"
	"math"

	"github.com/aegisipc/aegis/internal/msgpsize"
)

// msgpack format bytes used here.
const (
	mpNil      = 0xc0
	mpFalse    = 0xc2
	mpTrue     = 0xc3
	mpBin8     = 0xc4
	mpBin16    = 0xc5
	mpBin32    = 0xc6
	mpExt8     = 0xc7
	mpExt16    = 0xc8
	mpExt32    = 0xc9
	mpFloat32  = 0xca
	mpFloat64  = 0xcb
	mpUint8    = 0xcc
	mpUint16   = 0xcd
	mpUint32   = 0xce
	mpUint64   = 0xcf
	mpInt8     = 0xd0
	mpInt16    = 0xd1
	mpInt32    = 0xd2
	mpInt64    = 0xd3
	mpFixExt1  = 0xd4
	mpFixExt2  = 0xd5
	mpFixExt4  = 0xd6
	mpFixExt8  = 0xd7
	mpFixExt16 = 0xd8
	mpStr8     = 0xd9
	mpStr16    = 0xda
	mpStr32    = 0xdb
	mpArray16  = 0xdc
	mpArray32  = 0xdd
	mpMap16    = 0xde
	mpMap32    = 0xdf

	mpFixMap   = 0x80 // 0x80-0x8f
	mpFixArray = 0x90 // 0x90-0x9f
	mpFixStr   = 0xa0 // 0xa0-0xbf
	mpNegFix   = 0xe0 // 0xe0-0xff
)

// Decoding errors. They are sentinels so that failing to decode allocates
// nothing.
var (
	errShort    = errors.New("rpc: msgpack: truncated value")
	errType     = errors.New("rpc: msgpack: unexpected type")
	errRange    = errors.New("rpc: msgpack: integer out of range")
	errDepth    = errors.New("rpc: msgpack: nesting too deep")
	errTrailing = errors.New("rpc: msgpack: trailing bytes")
	errShape    = errors.New("rpc: msgpack: array too short")
)

// ---- encoding ----

func appendArrayHeader(b []byte, n int) []byte {
	return appendContainerHeader(b, n, mpFixArray, mpArray16, mpArray32)
}

func appendMapHeader(b []byte, n int) []byte {
	return appendContainerHeader(b, n, mpFixMap, mpMap16, mpMap32)
}

// appendContainerHeader appends an array or map header (fix, 16-bit and
// 32-bit forms) for n elements.
func appendContainerHeader(b []byte, n int, fix, c16, c32 byte) []byte {
	switch {
	case n < 16:
		return append(b, fix|byte(n))
	case n <= math.MaxUint16:
		return append(b, c16, byte(n>>8), byte(n))
	default:
		return append(b, c32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, mpUint8, byte(v))
	case v <= math.MaxUint16:
		return append(b, mpUint16, byte(v>>8), byte(v))
	case v <= math.MaxUint32:
		return append(b, mpUint32, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	default:
		b = append(b, mpUint64)
		return binary.BigEndian.AppendUint64(b, v)
	}
}

func appendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return appendUint(b, uint64(v))
	}
	switch {
	case v >= -32:
		return append(b, byte(v))
	case v >= math.MinInt8:
		return append(b, mpInt8, byte(v))
	case v >= math.MinInt16:
		return append(b, mpInt16, byte(v>>8), byte(v))
	case v >= math.MinInt32:
		return append(b, mpInt32, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	default:
		b = append(b, mpInt64)
		return binary.BigEndian.AppendUint64(b, uint64(v))
	}
}

func appendStr(b []byte, s string) []byte {
	return append(appendStrHeader(b, len(s)), s...)
}

// appendStrHeader appends the header of a string of n bytes; the caller
// appends the bytes.
func appendStrHeader(b []byte, n int) []byte {
	switch {
	case n < 32:
		b = append(b, mpFixStr|byte(n))
	case n <= math.MaxUint8:
		b = append(b, mpStr8, byte(n))
	case n <= math.MaxUint16:
		b = append(b, mpStr16, byte(n>>8), byte(n))
	default:
		b = append(b, mpStr32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return b
}

func appendBin(b []byte, p []byte) []byte {
	n := len(p)
	switch {
	case n <= math.MaxUint8:
		b = append(b, mpBin8, byte(n))
	case n <= math.MaxUint16:
		b = append(b, mpBin16, byte(n>>8), byte(n))
	default:
		b = append(b, mpBin32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, p...)
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, mpTrue)
	}
	return append(b, mpFalse)
}

// ---- encoded sizes (must match the append functions) ----

func containerHeaderSize(n int) int { return msgpsize.Container(n) }

func uintSize(v uint64) int { return msgpsize.Uint(v) }

func intSize(v int64) int {
	if v >= 0 {
		return uintSize(uint64(v))
	}
	return msgpsize.Neg(v)
}

func strSize(n int) int { return msgpsize.Str(n) }

func binSize(n int) int { return msgpsize.Bin(n) }

// ---- decoding ----

// decoder reads msgpack values from b starting at off. Every method checks
// bounds and returns an error instead of panicking; none allocates.
type decoder struct {
	b   []byte
	off int
}

// remaining reports how many unread bytes are left.
func (d *decoder) remaining() int { return len(d.b) - d.off }

func (d *decoder) readByte() (byte, error) {
	if d.off >= len(d.b) {
		return 0, errShort
	}
	c := d.b[d.off]
	d.off++
	return c, nil
}

// readN reads an n-byte big-endian unsigned number (n is 1, 2, 4 or 8).
func (d *decoder) readN(n int) (uint64, error) {
	if d.remaining() < n {
		return 0, errShort
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	switch n {
	case 1:
		return uint64(p[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(p)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(p)), nil
	default:
		return binary.BigEndian.Uint64(p), nil
	}
}

// readArrayLen reads an array header.
func (d *decoder) readArrayLen() (int, error) {
	c, err := d.readByte()
	if err != nil {
		return 0, err
	}
	var n uint64
	switch {
	case c&0xf0 == mpFixArray:
		n = uint64(c & 0x0f)
	case c == mpArray16:
		n, err = d.readN(2)
	case c == mpArray32:
		n, err = d.readN(4)
	default:
		return 0, errType
	}
	if err != nil {
		return 0, err
	}
	// Every element takes at least one byte.
	if n > uint64(d.remaining()) {
		return 0, errShort
	}
	return int(n), nil
}

// readMapLen reads a map header; nil counts as an empty map.
func (d *decoder) readMapLen() (int, error) {
	c, err := d.readByte()
	if err != nil {
		return 0, err
	}
	var n uint64
	switch {
	case c == mpNil:
		return 0, nil
	case c&0xf0 == mpFixMap:
		n = uint64(c & 0x0f)
	case c == mpMap16:
		n, err = d.readN(2)
	case c == mpMap32:
		n, err = d.readN(4)
	default:
		return 0, errType
	}
	if err != nil {
		return 0, err
	}
	// Every entry takes at least two bytes.
	if n > uint64(d.remaining())/2 {
		return 0, errShort
	}
	return int(n), nil
}

// readUint reads a non-negative integer in any msgpack integer format.
func (d *decoder) readUint() (uint64, error) {
	c, err := d.readByte()
	if err != nil {
		return 0, err
	}
	if c < 0x80 {
		return uint64(c), nil
	}
	switch c {
	case mpUint8:
		return d.readN(1)
	case mpUint16:
		return d.readN(2)
	case mpUint32:
		return d.readN(4)
	case mpUint64:
		return d.readN(8)
	case mpInt8, mpInt16, mpInt32, mpInt64:
		v, err := d.readSigned(c)
		if err != nil {
			return 0, err
		}
		if v < 0 {
			return 0, errRange
		}
		return uint64(v), nil
	}
	if c >= mpNegFix {
		return 0, errRange
	}
	return 0, errType
}

// readSigned reads the payload of an int8..int64 value whose format byte c
// was consumed.
func (d *decoder) readSigned(c byte) (int64, error) {
	switch c {
	case mpInt8:
		v, err := d.readN(1)
		return int64(int8(v)), err
	case mpInt16:
		v, err := d.readN(2)
		return int64(int16(v)), err
	case mpInt32:
		v, err := d.readN(4)
		return int64(int32(v)), err
	default:
		v, err := d.readN(8)
		return int64(v), err
	}
}

// readInt reads a signed integer in any msgpack integer format.
func (d *decoder) readInt() (int64, error) {
	c, err := d.readByte()
	if err != nil {
		return 0, err
	}
	if c < 0x80 {
		return int64(c), nil
	}
	if c >= mpNegFix {
		return int64(int8(c)), nil
	}
	switch c {
	case mpInt8, mpInt16, mpInt32, mpInt64:
		return d.readSigned(c)
	case mpUint8, mpUint16, mpUint32, mpUint64:
		d.off--
		v, err := d.readUint()
		if err != nil {
			return 0, err
		}
		if v > math.MaxInt64 {
			return 0, errRange
		}
		return int64(v), nil
	}
	return 0, errType
}

// readBool reads a boolean.
func (d *decoder) readBool() (bool, error) {
	c, err := d.readByte()
	if err != nil {
		return false, err
	}
	switch c {
	case mpTrue:
		return true, nil
	case mpFalse:
		return false, nil
	}
	return false, errType
}

// readRaw reads a str, bin or nil value and returns the [start, end) range of
// its bytes in d.b (start == end for nil and empty values). Both str and bin
// families are accepted for either use, as older msgpack writers encode
// []byte as str.
func (d *decoder) readRaw() (start, end int, err error) {
	c, err := d.readByte()
	if err != nil {
		return 0, 0, err
	}
	var n uint64
	switch {
	case c&0xe0 == mpFixStr:
		n = uint64(c & 0x1f)
	case c == mpNil:
		return d.off, d.off, nil
	case c == mpStr8 || c == mpBin8:
		n, err = d.readN(1)
	case c == mpStr16 || c == mpBin16:
		n, err = d.readN(2)
	case c == mpStr32 || c == mpBin32:
		n, err = d.readN(4)
	default:
		return 0, 0, errType
	}
	if err != nil {
		return 0, 0, err
	}
	if n > uint64(d.remaining()) {
		return 0, 0, errShort
	}
	start = d.off
	d.off += int(n)
	return start, d.off, nil
}

// maxSkipDepth bounds the nesting skip follows, so hostile input cannot
// exhaust the stack.
const maxSkipDepth = 32

// skip consumes one value of any msgpack type.
func (d *decoder) skip(depth int) error {
	if depth > maxSkipDepth {
		return errDepth
	}
	c, err := d.readByte()
	if err != nil {
		return err
	}
	n, elems, err := d.skipSize(c)
	if err != nil {
		return err
	}
	if elems == 0 {
		if n > uint64(d.remaining()) {
			return errShort
		}
		d.off += int(n)
		return nil
	}
	total := n * uint64(elems)
	if total > uint64(d.remaining()) {
		return errShort
	}
	for i := uint64(0); i < total; i++ {
		if err := d.skip(depth + 1); err != nil {
			return err
		}
	}
	return nil
}

// skipRest skips n more values and checks that nothing follows them: the
// end of a body, after the fields this version knows.
func (d *decoder) skipRest(n int) error {
	for range n {
		if err := d.skip(0); err != nil {
			return err
		}
	}
	if d.off != len(d.b) {
		return errTrailing
	}
	return nil
}

// skipSize tells what follows type byte c: n bytes, or for a container
// (elems 1 for arrays, 2 for maps) n entries of elems values each. It reads
// the length that follows c, if any.
func (d *decoder) skipSize(c byte) (n uint64, elems int, err error) {
	switch {
	case c < 0x80 || c >= mpNegFix || c == mpNil || c == mpFalse || c == mpTrue:
		return 0, 0, nil
	case c&0xf0 == mpFixMap:
		return uint64(c & 0x0f), 2, nil
	case c&0xf0 == mpFixArray:
		return uint64(c & 0x0f), 1, nil
	case c&0xe0 == mpFixStr:
		return uint64(c & 0x1f), 0, nil
	}
	if n, ok := fixedSize(c); ok {
		return n, 0, nil
	}
	switch c {
	case mpStr8, mpBin8:
		n, err = d.readN(1)
	case mpStr16, mpBin16:
		n, err = d.readN(2)
	case mpStr32, mpBin32:
		n, err = d.readN(4)
	case mpExt8:
		n, err = d.readN(1)
		n++ // the type byte
	case mpExt16:
		n, err = d.readN(2)
		n++
	case mpExt32:
		n, err = d.readN(4)
		n++
	case mpArray16:
		n, err = d.readN(2)
		elems = 1
	case mpArray32:
		n, err = d.readN(4)
		elems = 1
	case mpMap16:
		n, err = d.readN(2)
		elems = 2
	case mpMap32:
		n, err = d.readN(4)
		elems = 2
	default: // 0xc1, never used
		return 0, 0, errType
	}
	return n, elems, err
}

// fixedSize returns the bytes that follow type byte c for the types of a
// fixed size (numbers and fixext), counting an ext's type byte.
func fixedSize(c byte) (uint64, bool) {
	switch c {
	case mpUint8, mpInt8:
		return 1, true
	case mpUint16, mpInt16:
		return 2, true
	case mpUint32, mpInt32, mpFloat32:
		return 4, true
	case mpUint64, mpInt64, mpFloat64:
		return 8, true
	case mpFixExt1:
		return 2, true
	case mpFixExt2:
		return 3, true
	case mpFixExt4:
		return 5, true
	case mpFixExt8:
		return 9, true
	case mpFixExt16:
		return 17, true
	}
	return 0, false
}
