// This file encodes and decodes request and response frames: prefix, version, kind and msgpack body.

package rpc

import (
	"encoding/binary"
	"math"
	"strconv"
	"time"
)

// Field counts of the body arrays in this protocol version. Decoders skip any
// further elements a newer peer appends, and read a request of
// minRequestFields (before Epoch was added) with Epoch 0.
const (
	requestFields    = 10
	minRequestFields = 9
	responseFields   = 6
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
	return n + binSize(len(req.Payload)) + uintSize(uint64(req.Attempt)) + uintSize(req.Epoch)
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
	b = appendUint(b, req.Epoch)
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
	var l requestLayout
	if err := l.scan(body); err != nil {
		return err
	}
	// One string holds every text field; the fields are substrings of it.
	lo := l.text[0][0]
	var text string
	if l.textLen > 0 || l.headers > 0 {
		text = string(body[lo:l.hdrEnd])
	}
	*req = Request{
		CallID:     l.id,
		Service:    substr(text, lo, l.text[0]),
		Method:     substr(text, lo, l.text[1]),
		InstanceID: substr(text, lo, l.text[2]),
		MessageID:  substr(text, lo, l.text[3]),
		Timeout:    time.Duration(l.timeout),
		Attempt:    uint32(l.attempt),
		Epoch:      l.epoch,
	}
	if l.payload[1] > l.payload[0] {
		req.Payload = body[l.payload[0]:l.payload[1]:l.payload[1]]
	}
	if l.headers > 0 {
		h, err := l.headerMap(body, text, lo)
		if err != nil {
			return err
		}
		req.Header = h
	}
	return nil
}

// requestLayout is where a request body holds its fields: values, and
// [start, end) ranges of the body for strings and bytes.
type requestLayout struct {
	id               uint64
	text             [4][2]int // service, method, instanceID, messageID
	textLen          int
	timeout          int64
	hdrStart, hdrEnd int // the header map, from its map header
	headers          int // entries in it
	payload          [2]int
	attempt          uint64
	epoch            uint64
}

// scan checks that body is a whole request and fills l from it.
func (l *requestLayout) scan(body []byte) error {
	d := decoder{b: body}
	n, err := d.readArrayLen()
	if err != nil {
		return err
	}
	if n < minRequestFields {
		return errShape
	}
	if l.id, err = d.readUint(); err != nil {
		return err
	}
	for i := range l.text {
		s, e, err := d.readRaw()
		if err != nil {
			return err
		}
		l.text[i] = [2]int{s, e}
		l.textLen += e - s
	}
	if l.timeout, err = d.readInt(); err != nil {
		return err
	}
	l.hdrStart = d.off
	if l.headers, err = d.readMapLen(); err != nil {
		return err
	}
	for i := 0; i < 2*l.headers; i++ {
		if _, _, err := d.readRaw(); err != nil {
			return err
		}
	}
	l.hdrEnd = d.off
	if l.payload[0], l.payload[1], err = d.readRaw(); err != nil {
		return err
	}
	if l.attempt, err = d.readUint(); err != nil {
		return err
	}
	if l.attempt > math.MaxUint32 {
		return errRange
	}
	if n == minRequestFields {
		return nil
	}
	if l.epoch, err = d.readUint(); err != nil {
		return err
	}
	return d.skipRest(n - requestFields)
}

// headerMap builds the header map scan found, with keys and values
// substrings of text, which holds body[lo:].
func (l *requestLayout) headerMap(body []byte, text string, lo int) (map[string]string, error) {
	h := make(map[string]string, l.headers)
	hd := decoder{b: body, off: l.hdrStart}
	if _, err := hd.readMapLen(); err != nil {
		return nil, err
	}
	for i := 0; i < l.headers; i++ {
		ks, ke, err := hd.readRaw()
		if err != nil {
			return nil, err
		}
		vs, ve, err := hd.readRaw()
		if err != nil {
			return nil, err
		}
		h[substr(text, lo, [2]int{ks, ke})] = substr(text, lo, [2]int{vs, ve})
	}
	return h, nil
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
	if err := d.skipRest(n - responseFields); err != nil {
		return err
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
