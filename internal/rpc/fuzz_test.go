// This file holds the fuzz targets: the request and response decoders and the frame reader.

package rpc

import (
	"bytes"
	"testing"
)

// FuzzDecodeRequest decodes any body as a request: it must fail or decode
// without panicking, and what decodes must survive an encode/decode round
// trip unchanged.
func FuzzDecodeRequest(f *testing.F) {
	for _, req := range sampleRequests()[:2] {
		body := appendRequestFrame(nil, &req, 7, int64(req.Timeout))[frameOverhead:]
		f.Add(body)
		f.Add(body[:len(body)/2])
	}
	f.Add([]byte{0x99, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0xde, 0xff, 0xff})
	f.Add([]byte{0x9a, 1, 0xa0, 0xa0, 0xa0, 0xa0, 0, 0xc0, 0xc4, 0, 0, 0x91, 0x91, 0xc0})
	f.Fuzz(func(t *testing.T, body []byte) {
		var req Request
		if err := decodeRequest(body, &req); err != nil {
			return
		}
		if len(req.Payload) > len(body) || cap(req.Payload) != len(req.Payload) {
			t.Fatalf("payload %d/%d from body of %d", len(req.Payload), cap(req.Payload), len(body))
		}
		frame := appendRequestFrame(nil, &req, req.CallID, int64(req.Timeout))
		if got := requestFrameLen(&req, req.CallID, int64(req.Timeout)); got != len(frame)-prefixLen {
			t.Fatalf("requestFrameLen %d, encoded %d", got, len(frame)-prefixLen)
		}
		var again Request
		if err := decodeRequest(frame[frameOverhead:], &again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !requestsEqual(&req, &again) {
			t.Fatalf("round trip changed the request:\n%+v\n%+v", req, again)
		}
	})
}

// FuzzDecodeResponse is FuzzDecodeRequest for response bodies.
func FuzzDecodeResponse(f *testing.F) {
	for _, resp := range []Response{{Payload: []byte("x")}, {Err: &ErrorInfo{Code: "c", Message: "m", Retryable: true}}} {
		body := appendResponseFrame(nil, &resp, 9)[frameOverhead:]
		f.Add(body)
		f.Add(body[:len(body)-1])
	}
	f.Add([]byte{0x96, 1, 1, 0xc0, 0xa0, 0xdb, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, body []byte) {
		var resp Response
		if err := decodeResponse(body, &resp); err != nil {
			return
		}
		if len(resp.Payload) > len(body) {
			t.Fatalf("payload %d from body of %d", len(resp.Payload), len(body))
		}
		frame := appendResponseFrame(nil, &resp, resp.CallID)
		if got := responseFrameLen(&resp, resp.CallID); got != len(frame)-prefixLen {
			t.Fatalf("responseFrameLen %d, encoded %d", got, len(frame)-prefixLen)
		}
		var again Response
		if err := decodeResponse(frame[frameOverhead:], &again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if again.CallID != resp.CallID || !bytes.Equal(again.Payload, resp.Payload) ||
			(again.Err == nil) != (resp.Err == nil) || (again.Err != nil && *again.Err != *resp.Err) {
			t.Fatalf("round trip changed the response:\n%+v\n%+v", resp, again)
		}
	})
}

// FuzzFrameReader reads a stream of frames through the frame reader, with
// reads cut by cuts (each byte b gives a read of up to b*b bytes, 0 a read
// that times out), compares the frames with a reference parser, and decodes
// each one as a request or response.
func FuzzFrameReader(f *testing.F) {
	var reqs, resps []byte
	for i, req := range sampleRequests()[:2] {
		reqs = appendRequestFrame(reqs, &req, uint64(i+1), int64(req.Timeout))
	}
	for i, resp := range []Response{{Payload: []byte("x")}, {Err: &ErrorInfo{Code: "c", Message: "m"}}} {
		resps = appendResponseFrame(resps, &resp, uint64(i+1))
	}
	big := appendRequestFrame(nil, &Request{Payload: make([]byte, 600)}, 9, 0)
	f.Add([]byte{0, 3, 1, 40}, reqs, byte(0))
	f.Add([]byte{2, 0, 255}, reqs[:len(reqs)-5], byte(8))
	f.Add([]byte{1}, resps, byte(0x10))
	f.Add([]byte{7, 0}, append(big, reqs...), byte(0))
	f.Add([]byte{}, []byte{0, 0, 0, 1, Version}, byte(0))
	f.Add([]byte{5}, []byte{0, 0, 0x10, 0, Version, KindRequest, 0xdd, 0xff}, byte(0))
	f.Fuzz(func(t *testing.T, cuts, stream []byte, flags byte) {
		sizes := make([]int, len(cuts), len(cuts)+1)
		for i, c := range cuts {
			sizes[i] = int(c) * int(c)
		}
		sizes = append(sizes, 1) // so that reads progress
		kind := KindRequest
		if flags&0x10 != 0 {
			kind = KindResponse
		}
		limit := MinMaxFrameSize << (flags & 15)
		for _, fr := range checkFrameReader(t, stream, sizes, limit, kind) {
			if fr.big {
				continue
			}
			if kind == KindRequest {
				_ = decodeRequest(fr.body, new(Request))
			} else {
				_ = decodeResponse(fr.body, new(Response))
			}
		}
	})
}

func requestsEqual(a, b *Request) bool {
	if a.CallID != b.CallID || a.Service != b.Service || a.Method != b.Method ||
		a.InstanceID != b.InstanceID || a.MessageID != b.MessageID || a.Timeout != b.Timeout ||
		a.Attempt != b.Attempt || !bytes.Equal(a.Payload, b.Payload) || len(a.Header) != len(b.Header) {
		return false
	}
	for k, v := range a.Header {
		if bv, ok := b.Header[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
