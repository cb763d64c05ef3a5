// This file reads frames off a connection for both client and server: it
// checks the length prefix against the frame limit, skips oversized frames
// without buffering them, and validates the version and kind bytes.

package rpc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
)

// Frame-level protocol violations. Any of them means the peer is broken and
// the connection is closed.
var (
	errBadVersion = errors.New("rpc: unknown protocol version")
	errBadKind    = errors.New("rpc: unexpected frame kind")
	errShortFrame = errors.New("rpc: frame shorter than its header")
	errBadBigID   = errors.New("rpc: oversized frame without a readable call ID")
)

// isProtocolError reports whether err from frameReader.next means the peer
// broke the protocol (rather than the connection failing).
func isProtocolError(err error) bool {
	return err == errBadVersion || err == errBadKind || err == errShortFrame || err == errBadBigID
}

// readBufSize is the size of each connection's read buffer.
const readBufSize = 32 << 10

// peekIDLen is how much of an oversized frame's body is read to find its call
// ID: an array32 header (5 bytes) plus a uint64 (9 bytes) fit.
const peekIDLen = 16

// frameReader reads the frames of one kind from a connection. A read that
// fails with a timeout (a read deadline) loses nothing: the next call to next
// resumes the frame where it stopped.
type frameReader struct {
	br   *bufio.Reader
	max  int  // largest length prefix accepted
	kind byte // the frame kind expected

	part []byte // frame being read: len(part) bytes of it are in
	want int    // its length
	skip uint64 // bytes of an oversized frame still to discard
	big  uint64 // call ID of that frame
}

func newFrameReader(conn net.Conn, max int, kind byte) *frameReader {
	return &frameReader{br: bufio.NewReaderSize(conn, readBufSize), max: max, kind: kind}
}

// frameBuffered reports whether a whole frame within the limit is in the
// read buffer, so that next returns it without reading the connection.
func (r *frameReader) frameBuffered() bool {
	if r.skip > 0 || r.part != nil {
		return false
	}
	n := r.br.Buffered()
	if n < prefixLen {
		return false
	}
	hdr, _ := r.br.Peek(prefixLen) // buffered: cannot block or fail
	l := uint64(binary.BigEndian.Uint32(hdr))
	return l <= uint64(r.max) && uint64(n-prefixLen) >= l
}

// next reads one frame. Normally it returns the frame's body (the bytes after
// version and kind) in a fresh slice the caller owns. A frame longer than the
// limit is read past without being stored: next returns big=true and the call
// ID found at its start. Any error means the connection is unusable.
func (r *frameReader) next() (body []byte, bigID uint64, big bool, err error) {
	switch {
	case r.skip > 0:
		return r.skipRest()
	case r.part != nil:
		return r.fill()
	}
	hdr, err := r.br.Peek(prefixLen)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, 0, false, err
	}
	n := uint64(binary.BigEndian.Uint32(hdr))
	if n < frameHeadLen {
		return nil, 0, false, errShortFrame
	}
	if n > uint64(r.max) {
		return r.startSkip(n)
	}
	_, _ = r.br.Discard(prefixLen) // Peek returned them: cannot fail
	r.part, r.want = make([]byte, 0, n), int(n)
	return r.fill()
}

// fill reads the rest of the frame in r.part.
func (r *frameReader) fill() (body []byte, bigID uint64, big bool, err error) {
	for len(r.part) < r.want {
		m, err := r.br.Read(r.part[len(r.part):r.want])
		r.part = r.part[:len(r.part)+m]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, 0, false, err
		}
	}
	buf := r.part
	r.part = nil
	if err := r.checkHead(buf); err != nil {
		return nil, 0, false, err
	}
	return buf[frameHeadLen:], 0, false, nil
}

// checkHead validates the version and kind bytes at the start of p.
func (r *frameReader) checkHead(p []byte) error {
	if p[0] != Version {
		return errBadVersion
	}
	if p[1] != r.kind {
		return errBadKind
	}
	return nil
}

// startSkip begins reading past an oversized frame of n bytes (after the
// 4-byte prefix, which is still buffered), taking the call ID at its start.
func (r *frameReader) startSkip(n uint64) (body []byte, bigID uint64, big bool, err error) {
	head := uint64(frameHeadLen + peekIDLen)
	if n < head {
		head = n
	}
	p, err := r.br.Peek(prefixLen + int(head))
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, 0, false, err
	}
	p = p[prefixLen:]
	if err := r.checkHead(p); err != nil {
		return nil, 0, false, err
	}
	id, ok := peekCallID(p[frameHeadLen:])
	if !ok {
		return nil, 0, false, errBadBigID
	}
	r.big, r.skip = id, n+prefixLen
	return r.skipRest()
}

// skipRest discards the rest of an oversized frame.
func (r *frameReader) skipRest() (body []byte, bigID uint64, big bool, err error) {
	for r.skip > 0 {
		d, err := r.br.Discard(int(min(r.skip, 1<<30)))
		r.skip -= uint64(d)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, 0, false, err
		}
	}
	return nil, r.big, true, nil
}
