// Package msgpsize computes how many bytes msgpack values take, so that
// encoders can size frames and validators can bound records without
// encoding them.
package msgpsize

import "math"

// Uint returns the encoded size of an unsigned integer.
func Uint(v uint64) int {
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

// Str returns the encoded size of a string of n bytes.
func Str(n int) int {
	if n < 32 {
		return 1 + n // fixstr
	}
	return Bin(n) // str8, str16 and str32 have bin's header sizes
}

// Bin returns the encoded size of a byte string of n bytes.
func Bin(n int) int {
	switch {
	case n <= math.MaxUint8:
		return 2 + n
	case n <= math.MaxUint16:
		return 3 + n
	default:
		return 5 + n
	}
}

// Neg returns the encoded size of a negative integer v.
func Neg(v int64) int {
	switch {
	case v >= -32:
		return 1
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

// Container returns the size of an array or map header for n elements
// (msgpack has the same fix, 16-bit and 32-bit forms for both).
func Container(n int) int {
	switch {
	case n < 16:
		return 1
	case n <= math.MaxUint16:
		return 3
	default:
		return 5
	}
}
