package msgpsize

import (
	"math"
	"testing"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/stretchr/testify/require"
)

func encodedLen(t *testing.T, v any) int {
	var b []byte
	h := &codec.MsgpackHandle{WriteExt: true}
	require.NoError(t, codec.NewEncoderBytes(&b, h).Encode(v))
	return len(b)
}

// The sizes match what go-msgpack writes.
func TestSizesMatchTheCodec(t *testing.T) {
	for _, v := range []uint64{0, 127, 128, 255, 256, math.MaxUint16, math.MaxUint16 + 1, math.MaxUint32, math.MaxUint32 + 1} {
		require.Equal(t, encodedLen(t, v), Uint(v), "uint %d", v)
	}
	for _, n := range []int{0, 31, 32, 255, 256, 65535, 65536} {
		require.Equal(t, encodedLen(t, string(make([]byte, n))), Str(n), "str %d", n)
		require.Equal(t, encodedLen(t, make([]byte, n)), Bin(n), "bin %d", n)
	}
	for _, v := range []int64{-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1} {
		require.Equal(t, encodedLen(t, v), Neg(v), "neg %d", v)
	}
	for _, n := range []int{0, 15, 16, 65535, 65536} {
		arr := make([]bool, n)
		require.Equal(t, encodedLen(t, arr)-n, Container(n), "array %d", n)
	}
}
