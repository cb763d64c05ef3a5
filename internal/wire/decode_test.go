// Tests that decoding is bounded: lengths, limits, nesting, allocation.
package wire

import (
	"encoding/binary"
	"math"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Hand-built msgpack pieces.

func frame(t MsgType, body ...[]byte) []byte {
	out := []byte{Version, byte(t)}
	for _, b := range body {
		out = append(out, b...)
	}
	return out
}

func fixarray(n int) []byte { return []byte{0x90 | byte(n)} }
func fixmap(n int) []byte   { return []byte{0x80 | byte(n)} }
func array32(n uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{0xdd}, n)
}
func map32(n uint32) []byte { return binary.BigEndian.AppendUint32([]byte{0xdf}, n) }
func str32(n uint32) []byte { return binary.BigEndian.AppendUint32([]byte{0xdb}, n) }
func str(s string) []byte   { return append([]byte{0xa0 | byte(len(s))}, s...) }
func repeat(b []byte, n int) []byte {
	var out []byte
	for range n {
		out = append(out, b...)
	}
	return out
}

// recordBody returns the fields of a small valid record as msgpack, with
// meta and methods (already encoded) in their places.
func recordBody(meta, methods []byte) []byte {
	var b []byte
	b = append(b, 0xdc, 0, 20) // array16: more fields than a fixarray holds
	b = append(b, str("s")...)
	b = append(b, str("i")...)
	b = append(b, str("n")...)
	b = append(b, str("h:1")...)
	b = append(b, 0, 0)
	b = append(b, meta...)
	b = append(b, 1, 1, 1, 0xc2, 0xc2)
	b = append(b, methods...)
	return append(b, str("")[0], 0, 0, 0, 0xc0, 0, 0) // Group, Priority, Promotion, Epoch, Endpoints, Life, Index
}

// A metadata map and a method list of one entry each.
var (
	oneMeta   = append(fixmap(1), append(str("k"), str("v")...)...)
	oneMethod = append(fixarray(1), str("m")...)
)

// withField appends a field to an encoded struct of fewer than 15 fields.
func withField(structure []byte, field ...[]byte) []byte {
	out := append([]byte(nil), structure...)
	if out[0] == 0xdc { // array16
		out[2]++
	} else {
		out[0]++
	}
	for _, f := range field {
		out = append(out, f...)
	}
	return out
}

var nilv = []byte{0xc0}

// stateOf returns a state message holding the encoded records.
func stateOf(recs ...[]byte) []byte {
	b := append(fixarray(2), str("n")...)
	b = append(b, 0xdc, 0, byte(len(recs)))
	for _, r := range recs {
		b = append(b, r...)
	}
	return frame(MsgState, b)
}

// batchOf returns a heartbeat batch of n 8-byte heartbeats.
func batchOf(n int) []byte {
	b := append(fixarray(3), str("n")...)
	b = append(b, 0, 0xdc, byte(n>>8), byte(n))
	return frame(MsgHeartbeats, b, repeat(append(fixarray(5), str("s")[0], 's', str("i")[0], 'i', 1, 1, 0), n))
}

// decodeCases are messages that decode or are refused before the codec
// sees them.
var decodeCases = []struct {
	name string
	in   []byte
	want error // nil: decodes
}{
	{"record", frame(MsgRecord, recordBody(oneMeta, oneMethod)), nil},
	{"nil strings and collections", frame(MsgRecord, fixarray(13), repeat(nilv, 13)), nil},
	{"bin as string", frame(MsgRecord, fixarray(1), []byte{0xc4, 1, 's'}), nil},
	{"fewer fields (older sender)", frame(MsgRecord, fixarray(2), str("s"), str("i")), nil},
	{"more fields (newer sender)", frame(MsgRecord, withField(recordBody(nilv, nilv), fixarray(2), []byte{1, 2})), nil},
	{"state", stateOf(recordBody(nilv, nilv), recordBody(nilv, nilv)), nil},
	{"batch", batchOf(3), nil},

	{"record message over MaxRecordSize", frame(MsgRecord, fixarray(1), []byte{0xda, 0x04, 0x00}, make([]byte, 1024)), ErrInvalid},
	{"batch over MaxBatchSize", batchOf(174), ErrInvalid},
	{"too many beats", frame(MsgHeartbeats, fixarray(3), str("n"), []byte{0}, array32(176), repeat(nilv, 176)), ErrInvalid},
	{"too many meta entries", frame(MsgRecord, recordBody(map32(65), nilv), repeat(append(str("k"), str("")...), 65)), ErrInvalid},
	{"too many methods", frame(MsgRecord, recordBody(nilv, array32(65)), repeat(str("m"), 65)), ErrInvalid},
	{"too many state records", frame(MsgState, fixarray(2), str("n"), array32(65537), repeat(fixarray(0), 65537)), ErrInvalid},

	{"trailing bytes", frame(MsgRecord, recordBody(nilv, nilv), []byte{0}), ErrMalformed},
	{"record not an array", frame(MsgRecord, fixmap(1), str("Service"), str("s")), ErrMalformed},
	{"nil record", frame(MsgRecord, nilv), ErrMalformed},
	{"nil record in state", stateOf(nilv), ErrMalformed},
	{"array for a string", frame(MsgRecord, fixarray(1), fixarray(1), []byte{'s'}), ErrMalformed},
	{"number for a string", frame(MsgRecord, fixarray(1), []byte{7}), ErrMalformed},
	{"array for meta", frame(MsgRecord, recordBody(fixarray(0), nilv)), ErrMalformed},
	{"map for methods", frame(MsgRecord, recordBody(nilv, fixmap(0))), ErrMalformed},
	{"number as meta key", frame(MsgRecord, recordBody(fixmap(1), nilv), []byte{1}, str("v")), ErrMalformed},
	{"extension type", frame(MsgRecord, fixarray(5), str("s"), str("i"), str("n"), str("h:1"), []byte{0xd4, 1, 1}), ErrMalformed},
	{"reserved byte", frame(MsgRecord, fixarray(1), []byte{0xc1}), ErrMalformed},
	{"nested deepest", frame(MsgRecord, withField(recordBody(nilv, nilv), repeat(fixarray(1), 7), []byte{1})), nil},
	{"nested too deep", frame(MsgRecord, withField(recordBody(nilv, nilv), repeat(fixarray(1), 8), []byte{1})), ErrMalformed},
	{"string longer than message", frame(MsgRecord, fixarray(1), str32(math.MaxUint32)), ErrMalformed},
	{"array longer than message", frame(MsgState, fixarray(2), str("n"), array32(1<<31)), ErrMalformed},
	{"map longer than message", frame(MsgRecord, recordBody(map32(40), nilv)), ErrMalformed},
	{"truncated length", frame(MsgRecord, fixarray(1), []byte{0xdb, 0, 0}), ErrMalformed},
	{"truncated integer", frame(MsgRecord, fixarray(5), str("s"), str("i"), str("n"), str("h:1"), []byte{0xcf, 0}), ErrMalformed},
	{"wrong type for role", frame(MsgRecord, fixarray(5), str("s"), str("i"), str("n"), str("h:1"), str("x")), ErrMalformed},
}

func TestDecodeBounds(t *testing.T) {
	for _, c := range decodeCases {
		t.Run(c.name, func(t *testing.T) {
			m, err := Decode(c.in)
			if c.want == nil {
				require.NoError(t, err)
				require.Equal(t, MsgType(c.in[1]), m.Type)
				return
			}
			require.ErrorIs(t, err, c.want)
			require.NotErrorIs(t, err, errPanic)
		})
	}
}

func TestDecodeKeepsKnownFieldsOfNewerSenders(t *testing.T) {
	b := frame(MsgRecord, withField(recordBody(oneMeta, oneMethod), fixarray(2), []byte{1}, str("x")))
	m, err := Decode(b)
	require.NoError(t, err)
	require.Equal(t, &Record{Service: "s", ID: "i", Node: "n", Addr: "h:1", Meta: map[string]string{"k": "v"},
		Incarnation: 1, Seq: 1, Time: 1, NonIdempotent: []string{"m"}}, m.Record)
}

func TestDecodeLimitedUsesItsLimits(t *testing.T) {
	r := goodRecord()
	r.Meta = bigMeta(70)
	b, err := Encode(&r)
	require.NoError(t, err)
	_, err = Decode(b)
	require.ErrorIs(t, err, ErrInvalid)
	m, err := DecodeLimited(b, Limits{MaxMetaEntries: 70})
	require.NoError(t, err)
	require.NoError(t, m.Validate(Limits{MaxMetaEntries: 70}))

	big := State{Node: "n", Records: make([]Record, 3)}
	for i := range big.Records {
		big.Records[i] = goodRecord()
	}
	b, err = Encode(&big)
	require.NoError(t, err)
	_, err = DecodeLimited(b, Limits{MaxStateRecords: 2})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = DecodeLimited(b, Limits{MaxStateRecords: 3})
	require.NoError(t, err)
}

// hugeDeclarations returns 60-byte messages, one per collection the codec
// allocates for, each declaring 2^31 elements (or bytes).
func hugeDeclarations() map[string][]byte {
	pad := func(b []byte) []byte {
		for len(b) < 60 {
			b = append(b, 0xc0)
		}
		return b
	}
	const n = 1 << 31
	return map[string][]byte{
		"state records": pad(frame(MsgState, fixarray(2), str("n"), array32(n))),
		"beats":         pad(frame(MsgHeartbeats, fixarray(3), str("n"), []byte{0}, array32(n))),
		"meta":          pad(frame(MsgRecord, recordBody(map32(n), nil))),
		"methods":       pad(frame(MsgRecord, recordBody([]byte{0xc0}, array32(n)))),
		"string":        pad(frame(MsgRecord, fixarray(1), str32(n))),
		"record fields": pad(frame(MsgRecord, array32(n))),
	}
}

func TestHugeDeclaredLengthsAllocateLittle(t *testing.T) {
	for name, b := range hugeDeclarations() {
		t.Run(name, func(t *testing.T) {
			require.Len(t, b, 60)
			_, err := Decode(b)
			require.Error(t, err)
			allocs := testing.AllocsPerRun(20, func() { _, _ = Decode(b) })
			require.LessOrEqual(t, allocs, 10.0)
			require.Less(t, bytesAllocated(func() { _, _ = Decode(b) }), uint64(2048))
		})
	}
}

// TestCodecAloneAllocatesLittle checks the codec's own bound (MaxInitLen),
// which would hold if the scanner let a huge declaration through.
func TestCodecAloneAllocatesLittle(t *testing.T) {
	for name, b := range hugeDeclarations() {
		t.Run(name, func(t *testing.T) {
			var target any
			switch MsgType(b[1]) {
			case MsgRecord:
				target = new(Record)
			case MsgHeartbeats:
				target = new(HeartbeatBatch)
			case MsgState:
				target = new(State)
			}
			require.ErrorIs(t, decodeBody(b[2:], target), ErrMalformed)
			// Without MaxInitLen the codec would allocate 256-600 KB up front;
			// with it, in proportion to the nils that pad the message.
			require.Less(t, bytesAllocated(func() { _ = decodeBody(b[2:], target) }), uint64(64<<10))
		})
	}
}

// bytesAllocated returns the bytes f allocates, averaged over some runs.
func bytesAllocated(f func()) uint64 {
	const runs = 20
	f()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / runs
}

func TestSizesMatchEncoding(t *testing.T) {
	recs := []Record{
		{},
		goodRecord(),
		{Service: strings.Repeat("s", 31), ID: strings.Repeat("i", 32), Node: strings.Repeat("n", 255), Addr: strings.Repeat("a", 256),
			Role: 127, Status: 128, Meta: map[string]string{}, NonIdempotent: []string{}},
		{Role: 255, Status: 255, Meta: bigMeta(16), NonIdempotent: make([]string, 16), Incarnation: -1, Seq: 128, Time: -32},
		{Meta: bigMeta(15), NonIdempotent: make([]string, 15), Incarnation: -33, Seq: 255, Time: 127, Deleted: true, Heartbeats: true},
		{Meta: map[string]string{"": strings.Repeat("v", 70000)}, Incarnation: 128, Seq: 256, Time: math.MinInt8},
		{Incarnation: math.MinInt8 - 1, Seq: 65535, Time: math.MaxInt16},
		{Incarnation: math.MaxInt16 + 1, Seq: 65536, Time: math.MinInt16},
		{Incarnation: math.MinInt16 - 1, Seq: math.MaxUint32, Time: math.MaxInt32},
		{Incarnation: math.MaxInt32 + 1, Seq: math.MaxUint32 + 1, Time: math.MinInt32},
		{Incarnation: math.MinInt32 - 1, Seq: math.MaxUint64, Time: math.MaxInt64},
		{Incarnation: math.MinInt64, NonIdempotent: make([]string, 65536)},
	}
	for i := range recs {
		b, err := Encode(&recs[i])
		require.NoError(t, err)
		require.Equal(t, len(b), recordSize(&recs[i]), "record %d", i)
	}
	batches := []HeartbeatBatch{{}, goodBatch(), smallBeats(15), smallBeats(16), smallBeats(65536),
		{Node: "n", Time: -1, Beats: []Heartbeat{{Incarnation: math.MinInt64, Seq: math.MaxUint64, Status: 200}}}}
	for i := range batches {
		b, err := Encode(&batches[i])
		require.NoError(t, err)
		require.Equal(t, len(b), batchSize(&batches[i]), "batch %d", i)
	}
}
