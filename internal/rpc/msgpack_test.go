// This file checks that the hand-rolled codec speaks real msgpack both ways and rejects bad input.

package rpc

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/stretchr/testify/require"
)

// wireRequest and wireResponse mirror the body arrays for go-msgpack.
type wireRequest struct {
	_struct    struct{} `codec:",toarray"` //nolint:unused // codec option
	CallID     uint64
	Service    string
	Method     string
	InstanceID string
	MessageID  string
	Timeout    int64
	Header     map[string]string
	Payload    []byte
	Attempt    uint32
	Epoch      uint64
}

type wireResponse struct {
	_struct   struct{} `codec:",toarray"` //nolint:unused // codec option
	CallID    uint64
	Status    uint64
	Payload   []byte
	ErrCode   string
	ErrMsg    string
	Retryable bool
}

// handles returns go-msgpack handles for the new spec (str8, bin) and the
// old one (raw only).
func handles() map[string]*codec.MsgpackHandle {
	return map[string]*codec.MsgpackHandle{
		"new-spec": {WriteExt: true, BasicHandle: codec.BasicHandle{DecodeOptions: codec.DecodeOptions{RawToString: true}}},
		"old-spec": {WriteExt: false, BasicHandle: codec.BasicHandle{DecodeOptions: codec.DecodeOptions{RawToString: true}}},
	}
}

func gmpEncode(t *testing.T, h *codec.MsgpackHandle, v any) []byte {
	t.Helper()
	var b []byte
	require.NoError(t, codec.NewEncoderBytes(&b, h).Encode(v))
	return b
}

func gmpDecode(t *testing.T, h *codec.MsgpackHandle, b []byte, v any) {
	t.Helper()
	require.NoError(t, codec.NewDecoderBytes(b, h).Decode(v))
}

func sampleRequests() []Request {
	return []Request{
		{},
		{Service: "svc", Method: "Get", InstanceID: "i-1", MessageID: "m-1", Timeout: 1500 * time.Millisecond,
			Header: map[string]string{"a": "b", "trace": "xyz"}, Payload: []byte{0, 1, 2, 0xff}, Attempt: 2, Epoch: 7},
		{Service: strings.Repeat("s", 31), Method: strings.Repeat("m", 32), InstanceID: strings.Repeat("i", 256),
			MessageID: strings.Repeat("x", 70000), Timeout: -5, Payload: bytes.Repeat([]byte{7}, 256), Attempt: math.MaxUint32, Epoch: math.MaxUint64},
		{Header: manyHeaders(20), Payload: bytes.Repeat([]byte{9}, 70000), Timeout: math.MaxInt64},
	}
}

func manyHeaders(n int) map[string]string {
	m := make(map[string]string, n)
	for i := 0; i < n; i++ {
		m[strings.Repeat("k", i+1)] = strings.Repeat("v", i)
	}
	return m
}

func TestRequestBodyIsMsgpack(t *testing.T) {
	h := handles()["new-spec"]
	for i, req := range sampleRequests() {
		const id = 1<<40 + 5
		frame := appendRequestFrame(nil, &req, id, int64(req.Timeout))
		require.Equal(t, requestFrameLen(&req, id, int64(req.Timeout)), len(frame)-prefixLen, "size %d", i)
		body := frame[frameOverhead:]

		// As a generic array, the way the brief's reviewers will look at it.
		var arr []interface{}
		gmpDecode(t, h, body, &arr)
		require.Len(t, arr, requestFields)
		require.EqualValues(t, id, arr[0])
		require.Equal(t, req.Service, arr[1])
		require.Equal(t, req.Method, arr[2])
		require.Equal(t, req.InstanceID, arr[3])
		require.Equal(t, req.MessageID, arr[4])
		require.EqualValues(t, int64(req.Timeout), toInt64(arr[5]))
		if len(req.Header) == 0 {
			require.Nil(t, arr[6])
		} else {
			m, ok := arr[6].(map[interface{}]interface{})
			require.True(t, ok, "header is a map, got %T", arr[6])
			require.Len(t, m, len(req.Header))
			for k, v := range req.Header {
				require.Equal(t, v, m[k])
			}
		}
		require.Equal(t, string(req.Payload), arr[7]) // RawToString turns bin into string
		require.EqualValues(t, req.Attempt, toInt64(arr[8]))

		// Into a typed struct.
		var w wireRequest
		gmpDecode(t, h, body, &w)
		require.Equal(t, uint64(id), w.CallID)
		require.Equal(t, req.Service, w.Service)
		require.Equal(t, req.MessageID, w.MessageID)
		require.Equal(t, int64(req.Timeout), w.Timeout)
		if len(req.Header) > 0 {
			require.Equal(t, req.Header, w.Header)
		}
		require.True(t, bytes.Equal(req.Payload, w.Payload))
		require.Equal(t, req.Attempt, w.Attempt)
	}
}

// A MessageSeq travels as base-36 digits appended to MessageID; the
// receiver sees one string, also where the digits push the ID into a
// longer msgpack string form.
func TestMessageSeqOnTheWire(t *testing.T) {
	h := handles()["new-spec"]
	for _, tc := range []struct {
		prefix string
		seq    uint64
	}{
		{"", 1},
		{"node-a-1f2e-", 35},
		{strings.Repeat("x", 30), 36*36 - 1}, // 32 bytes: str8 instead of fixstr
		{strings.Repeat("y", 250), math.MaxUint64},
		{strings.Repeat("z", 65530), 36 * 36 * 36},
	} {
		req := Request{Service: "s", MessageID: tc.prefix, MessageSeq: tc.seq, Payload: []byte("p")}
		want := tc.prefix + strconv.FormatUint(tc.seq, 36)
		frame := appendRequestFrame(nil, &req, 7, 0)
		require.Equal(t, requestFrameLen(&req, 7, 0), len(frame)-prefixLen, "prefix %d bytes", len(tc.prefix))
		var got Request
		require.NoError(t, decodeRequest(frame[frameOverhead:], &got))
		require.Equal(t, want, got.MessageID)
		require.Zero(t, got.MessageSeq)
		require.Equal(t, "p", string(got.Payload))
		var w wireRequest
		gmpDecode(t, h, frame[frameOverhead:], &w)
		require.Equal(t, want, w.MessageID)
	}
}

func toInt64(v interface{}) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case uint64:
		return int64(x)
	}
	return math.MinInt64
}

func TestDecodeRequestFromGoMsgpack(t *testing.T) {
	for name, h := range handles() {
		for i, req := range sampleRequests() {
			w := wireRequest{CallID: uint64(i) * 1000003, Service: req.Service, Method: req.Method,
				InstanceID: req.InstanceID, MessageID: req.MessageID, Timeout: int64(req.Timeout),
				Header: req.Header, Payload: req.Payload, Attempt: req.Attempt, Epoch: req.Epoch}
			body := gmpEncode(t, h, &w)
			var got Request
			require.NoError(t, decodeRequest(body, &got), "%s sample %d", name, i)
			want := req
			want.CallID = w.CallID
			if len(want.Payload) == 0 {
				want.Payload = nil
			}
			if len(want.Header) == 0 {
				want.Header = nil
			}
			require.Equal(t, want, got, "%s sample %d", name, i)

			// The same layout as a generic array, with the trailing
			// extension element a later version might add.
			arr := []interface{}{w.CallID, w.Service, w.Method, w.InstanceID, w.MessageID, w.Timeout,
				w.Header, w.Payload, w.Attempt, w.Epoch, map[string]interface{}{"future": []interface{}{1.5, true, nil}}}
			body = gmpEncode(t, h, arr)
			var got2 Request
			require.NoError(t, decodeRequest(body, &got2), "%s sample %d", name, i)
			require.Equal(t, want, got2)
		}
	}
}

func TestResponseBodyIsMsgpack(t *testing.T) {
	resps := []Response{
		{},
		{Payload: []byte("hello")},
		{Payload: bytes.Repeat([]byte{1}, 300), Err: &ErrorInfo{Code: "busy", Message: strings.Repeat("m", 40), Retryable: true}},
		{Err: &ErrorInfo{}},
	}
	for name, h := range handles() {
		for i, resp := range resps {
			const id = 77
			frame := appendResponseFrame(nil, &resp, id)
			require.Equal(t, responseFrameLen(&resp, id), len(frame)-prefixLen)
			var w wireResponse
			gmpDecode(t, h, frame[frameOverhead:], &w)
			require.Equal(t, uint64(id), w.CallID)
			require.True(t, bytes.Equal(resp.Payload, w.Payload))
			if resp.Err == nil {
				require.Zero(t, w.Status)
			} else {
				require.Equal(t, uint64(1), w.Status)
				require.Equal(t, resp.Err.Code, w.ErrCode)
				require.Equal(t, resp.Err.Message, w.ErrMsg)
				require.Equal(t, resp.Err.Retryable, w.Retryable)
			}

			// And back: go-msgpack's encoding decodes here.
			body := gmpEncode(t, h, &w)
			var got Response
			require.NoError(t, decodeResponse(body, &got), "%s %d", name, i)
			want := resp
			want.CallID = id
			if len(want.Payload) == 0 {
				want.Payload = nil
			}
			require.Equal(t, want, got)
		}
	}
}

// TestPrimitivesAgainstGoMsgpack checks every width of every type both ways.
func TestPrimitivesAgainstGoMsgpack(t *testing.T) {
	uints := []uint64{0, 1, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxUint64}
	ints := []int64{0, 1, -1, -32, -33, -128, -129, 127, 128, -32768, -32769, 32767, 32768,
		math.MinInt32, math.MinInt32 - 1, math.MaxInt32, math.MaxInt32 + 1, math.MinInt64, math.MaxInt64}
	lens := []int{0, 1, 31, 32, 255, 256, 65535, 65536}
	for name, h := range handles() {
		for _, v := range uints {
			b := appendUint(nil, v)
			require.Equal(t, uintSize(v), len(b))
			var got uint64
			gmpDecode(t, h, b, &got)
			require.Equal(t, v, got)
			d := decoder{b: gmpEncode(t, h, v)}
			back, err := d.readUint()
			require.NoError(t, err, "%s %d", name, v)
			require.Equal(t, v, back)
		}
		for _, v := range ints {
			b := appendInt(nil, v)
			require.Equal(t, intSize(v), len(b))
			var got int64
			gmpDecode(t, h, b, &got)
			require.Equal(t, v, got)
			d := decoder{b: gmpEncode(t, h, v)}
			back, err := d.readInt()
			require.NoError(t, err, "%s %d", name, v)
			require.Equal(t, v, back)
		}
		for _, n := range lens {
			s := strings.Repeat("z", n)
			b := appendStr(nil, s)
			require.Equal(t, strSize(n), len(b))
			var got string
			gmpDecode(t, h, b, &got)
			require.Equal(t, s, got)

			p := bytes.Repeat([]byte{3}, n)
			b = appendBin(nil, p)
			require.Equal(t, binSize(n), len(b))
			var gotp []byte
			gmpDecode(t, h, b, &gotp)
			require.Equal(t, n, len(gotp))

			for _, enc := range [][]byte{gmpEncode(t, h, s), gmpEncode(t, h, p)} {
				d := decoder{b: enc}
				start, end, err := d.readRaw()
				require.NoError(t, err)
				require.Equal(t, n, end-start)
				require.Equal(t, len(enc), d.off)
			}
		}
		for _, n := range []int{0, 15, 16, 65535, 65536} {
			arr := make([]interface{}, n)
			b := appendArrayHeader(nil, n)
			require.Equal(t, containerHeaderSize(n), len(b))
			for range n {
				b = append(b, mpNil)
			}
			var got []interface{}
			gmpDecode(t, h, b, &got)
			require.Len(t, got, n)
			d := decoder{b: gmpEncode(t, h, arr)}
			l, err := d.readArrayLen()
			require.NoError(t, err)
			require.Equal(t, n, l)

			m := make(map[string]string, n)
			for i := range n {
				m[strconv.Itoa(i)] = ""
			}
			b = appendMapHeader(nil, len(m))
			require.Equal(t, containerHeaderSize(len(m)), len(b))
			for k, v := range m {
				b = appendStr(appendStr(b, k), v)
			}
			var gotm map[string]string
			gmpDecode(t, h, b, &gotm)
			require.Equal(t, len(m), len(gotm))
			d = decoder{b: gmpEncode(t, h, m)}
			l, err = d.readMapLen()
			require.NoError(t, err)
			require.Equal(t, len(m), l)
		}
		for _, v := range []bool{true, false} {
			var got bool
			gmpDecode(t, h, appendBool(nil, v), &got)
			require.Equal(t, v, got)
		}
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	req := sampleRequests()[1]
	body := appendRequestFrame(nil, &req, 42, 9)[frameOverhead:]
	for n := 0; n < len(body); n++ { // every truncation fails cleanly
		var r Request
		require.Error(t, decodeRequest(body[:n], &r), "prefix %d", n)
	}
	resp := Response{Payload: []byte("p"), Err: &ErrorInfo{Code: "c", Message: "m"}}
	rbody := appendResponseFrame(nil, &resp, 42)[frameOverhead:]
	for n := 0; n < len(rbody); n++ {
		var r Response
		require.Error(t, decodeResponse(rbody[:n], &r), "prefix %d", n)
	}

	bad := map[string][]byte{
		// map claiming 65535 entries in a few bytes: rejected before allocating
		"huge-map": {0x99, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0xde, 0xff, 0xff, 0xa0, 0xa0},
		// array32 claiming 4G elements
		"huge-array": {0xdd, 0xff, 0xff, 0xff, 0xff, 1},
		// str32 claiming 4 GiB
		"huge-str": {0x99, 1, 0xdb, 0xff, 0xff, 0xff, 0xff, 0xa0},
		// negative call ID
		"negative-id": {0x99, 0xff, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0xc0, 0xc4, 0, 0},
		// attempt beyond uint32
		"attempt-range": {0x99, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0xc0, 0xc4, 0, 0xcf, 1, 0, 0, 0, 0, 0, 0, 0},
		// timeout beyond int64
		"timeout-range": {0x99, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0xcf, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xc0, 0xc4, 0, 0},
		// a header value that is not a string
		"header-type": {0x99, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0x81, 0xa1, 'k', 0x01, 0xc4, 0, 0},
		// deeply nested trailing element
		"deep": append(append([]byte{0x9b, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0xc0, 0xc4, 0, 0, 0},
			bytes.Repeat([]byte{0x91}, 100)...), 0),
		// the never-used format byte
		"c1": {0x99, 0xc1},
		// array too short
		"short-array": {0x98, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0xc0, 0xc4, 0},
	}
	for name, b := range bad {
		var r Request
		require.Error(t, decodeRequest(b, &r), name)
	}
	// A well-formed body with a nested trailing element within the depth
	// limit is accepted.
	ok := append([]byte{0x9b, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0xc0, 0xc4, 0, 0, 0}, bytes.Repeat([]byte{0x91}, 10)...)
	var r Request
	require.NoError(t, decodeRequest(append(ok, 0xc0), &r))

	_, ok2 := peekCallID([]byte{0xdc, 0})
	require.False(t, ok2)
	id, ok2 := peekCallID([]byte{0xdc, 0, 9, 0xcd, 1, 2})
	require.True(t, ok2)
	require.Equal(t, uint64(0x102), id)
}

func TestDecodeAllocations(t *testing.T) {
	req := Request{Service: "svc", Method: "m", InstanceID: "i", MessageID: "x", Payload: make([]byte, 64)}
	body := appendRequestFrame(nil, &req, 1, 0)[frameOverhead:]
	allocs := testing.AllocsPerRun(100, func() {
		var r Request
		if err := decodeRequest(body, &r); err != nil {
			panic(err)
		}
	})
	require.LessOrEqual(t, allocs, 1.0, "all strings share one allocation")

	resp := Response{Payload: make([]byte, 64)}
	rbody := appendResponseFrame(nil, &resp, 1)[frameOverhead:]
	allocs = testing.AllocsPerRun(100, func() {
		var r Response
		if err := decodeResponse(rbody, &r); err != nil {
			panic(err)
		}
	})
	require.Zero(t, allocs)
}
