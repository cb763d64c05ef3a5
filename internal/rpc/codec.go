// This file encodes and decodes request and response frames: the 4-byte
// length prefix, the version and kind bytes, and the msgpack array body.

package rpc

import (
	"encoding/binary"
	"math"
	"strconv"
	"time"
)

// Field counts of the body arrays in this protocol version. Decoders skip any
// further elements a newer peer appends.
const (
	requestFields  = 9
	responseFields = 6
)

// frameOverhead is what a frame holds besides its body: the length prefix,
// the version and the kind byte.
const (
	prefixLen     = 4
	frameHeadLen  = 2 // version + kind, counted in the length prefix
	frameOverhead = prefixLen + frameHeadLen
)

// requestFrameLen returns the length prefix value (version, kind and body
// bytes) of the request frame appendRequestFrame would write.
func requestFrameLen(req *Request, id uint64, timeout int64) int {
	n := frameHeadLen + containerHeaderSize(requestFields) + uintSize(id) +
		strSize(len(req.Service)) + strSize(len(req.Method)) +
		strSize(len(req.InstanceID)) + strSize(messageIDLen(req)) +
		intSize(timeout)
	if len(req.Header) == 0 {
		n++
	} else {
		n += containerHeaderSize(len(req.Header))
		for k, v := range req.Header {
			n += strSize(len(k)) + strSize(len(v))
		}
	}
	return n + binSize(len(req.Payload)) + uintSize(uint64(req.Attempt))
}

// appendRequestFrame appends a complete request frame for req with the given
// call ID and timeout in nanoseconds (0 = none); req.CallID and req.Timeout
// are not used.
func appendRequestFrame(b []byte, req *Request, id uint64, timeout int64) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, Version, KindRequest)
	b = appendArrayHeader(b, requestFields)
	b = appendUint(b, id)
	b = appendStr(b, req.Service)
	b = appendStr(b, req.Method)
	b = appendStr(b, req.InstanceID)
	if req.MessageSeq == 0 {
		b = appendStr(b, req.MessageID)
	} else {
		b = appendStrHeader(b, messageIDLen(req))
		b = append(b, req.MessageID...)
		b = strconv.AppendUint(b, req.MessageSeq, 36)
	}
	b = appendInt(b, timeout)
	if len(req.Header) == 0 {
		b = append(b, mpNil)
	} else {
		b = appendMapHeader(b, len(req.Header))
		for k, v := range req.Header {
			b = appendStr(b, k)
			b = appendStr(b, v)
		}
	}
	b = appendBin(b, req.Payload)
	b = appendUint(b, uint64(req.Attempt))
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-prefixLen))
	return b
}

// messageIDLen is the length of the message ID req sends: MessageID and,
// if MessageSeq is non-zero, its base-36 digits.
func messageIDLen(req *Request) int {
	n := len(req.MessageID)
	for v := req.MessageSeq; v != 0; v /= 36 {
		n++
	}
	return n
}

// responseFrameLen returns the length prefix value of the response frame
// appendResponseFrame would write.
func responseFrameLen(resp *Response, id uint64) int {
	n := frameHeadLen + containerHeaderSize(responseFields) + uintSize(id) + 1 +
		binSize(len(resp.Payload)) + 1
	if resp.Err != nil {
		return n + strSize(len(resp.Err.Code)) + strSize(len(resp.Err.Message))
	}
	return n + 2 // two empty strings
}

// appendResponseFrame appends a complete response frame answering call id;
// resp.CallID is not used.
func appendResponseFrame(b []byte, resp *Response, id uint64) []byte {
	start := len(b)
	b = append(b, 0, 0, 0, 0, Version, KindResponse)
	b = appendArrayHeader(b, responseFields)
	b = appendUint(b, id)
	if resp.Err == nil {
		b = append(b, 0) // status ok
		b = appendBin(b, resp.Payload)
		b = append(b, mpFixStr, mpFixStr, mpFalse)
	} else {
		b = append(b, 1) // status error
		b = appendBin(b, resp.Payload)
		b = appendStr(b, resp.Err.Code)
		b = appendStr(b, resp.Err.Message)
		b = appendBool(b, resp.Err.Retryable)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-prefixLen))
	return b
}

// decodeRequest decodes a request body (the bytes after version and kind)
// into req. Payload aliases body; the strings share one allocation. It never
// panics and allocates at most len(body) bytes plus the header map.
func decodeRequest(body []byte, req *Request) error {
	d := decoder{b: body}
	n, err := d.readArrayLen()
	if err != nil {
		return err
	}
	if n < requestFields {
		return errShape
	}
	id, err := d.readUint()
	if err != nil {
		return err
	}
	var rng [4][2]int // service, method, instanceID, messageID
	textLen := 0
	for i := range rng {
		s, e, err := d.readRaw()
		if err != nil {
			return err
		}
		rng[i] = [2]int{s, e}
		textLen += e - s
	}
	timeout, err := d.readInt()
	if err != nil {
		return err
	}
	hdrStart := d.off
	hn, err := d.readMapLen()
	if err != nil {
		return err
	}
	for i := 0; i < 2*hn; i++ {
		if _, _, err := d.readRaw(); err != nil {
			return err
		}
	}
	hdrEnd := d.off
	ps, pe, err := d.readRaw()
	if err != nil {
		return err
	}
	attempt, err := d.readUint()
	if err != nil {
		return err
	}
	if attempt > math.MaxUint32 {
		return errRange
	}
	for i := requestFields; i < n; i++ {
		if err := d.skip(0); err != nil {
			return err
		}
	}
	if d.off != len(body) {
		return errTrailing
	}

	// One string holds every text field; the fields are substrings of it.
	lo := rng[0][0]
	var text string
	if textLen > 0 || hn > 0 {
		text = string(body[lo:hdrEnd])
	}
	*req = Request{
		CallID:     id,
		Service:    substr(text, lo, rng[0]),
		Method:     substr(text, lo, rng[1]),
		InstanceID: substr(text, lo, rng[2]),
		MessageID:  substr(text, lo, rng[3]),
		Timeout:    time.Duration(timeout),
		Attempt:    uint32(attempt),
	}
	if pe > ps {
		req.Payload = body[ps:pe:pe]
	}
	if hn > 0 {
		h := make(map[string]string, hn)
		hd := decoder{b: body, off: hdrStart}
		if _, err := hd.readMapLen(); err != nil {
			return err
		}
		for i := 0; i < hn; i++ {
			ks, ke, err := hd.readRaw()
			if err != nil {
				return err
			}
			vs, ve, err := hd.readRaw()
			if err != nil {
				return err
			}
			h[substr(text, lo, [2]int{ks, ke})] = substr(text, lo, [2]int{vs, ve})
		}
		req.Header = h
	}
	return nil
}

// decodeResponse decodes a response body (the bytes after version and kind)
// into resp. Payload aliases body. It never panics and allocates at most
// len(body) bytes plus an ErrorInfo.
func decodeResponse(body []byte, resp *Response) error {
	d := decoder{b: body}
	n, err := d.readArrayLen()
	if err != nil {
		return err
	}
	if n < responseFields {
		return errShape
	}
	id, err := d.readUint()
	if err != nil {
		return err
	}
	status, err := d.readUint()
	if err != nil {
		return err
	}
	ps, pe, err := d.readRaw()
	if err != nil {
		return err
	}
	cs, ce, err := d.readRaw()
	if err != nil {
		return err
	}
	ms, me, err := d.readRaw()
	if err != nil {
		return err
	}
	retryable, err := d.readBool()
	if err != nil {
		return err
	}
	for i := responseFields; i < n; i++ {
		if err := d.skip(0); err != nil {
			return err
		}
	}
	if d.off != len(body) {
		return errTrailing
	}
	*resp = Response{CallID: id}
	if pe > ps {
		resp.Payload = body[ps:pe:pe]
	}
	if status != 0 {
		var text string
		if me > cs {
			text = string(body[cs:me])
		}
		resp.Err = &ErrorInfo{
			Code:      substr(text, cs, [2]int{cs, ce}),
			Message:   substr(text, cs, [2]int{ms, me}),
			Retryable: retryable,
		}
	}
	return nil
}

// substr returns the field at body range r out of text, which holds
// body[lo:] (or is empty when every field is).
func substr(text string, lo int, r [2]int) string {
	if r[0] == r[1] {
		return ""
	}
	return text[r[0]-lo : r[1]-lo]
}

// peekCallID extracts the call ID from the first bytes of a body (after
// version and kind) whose remainder was not read.
func peekCallID(prefix []byte) (uint64, bool) {
	d := decoder{b: prefix}
	c, err := d.readByte()
	if err != nil {
		return 0, false
	}
	switch {
	case c&0xf0 == mpFixArray:
	case c == mpArray16:
		d.off += 2
	case c == mpArray32:
		d.off += 4
	default:
		return 0, false
	}
	if d.off > len(prefix) {
		return 0, false
	}
	id, err := d.readUint()
	return id, err == nil
}
