// This file reads frames for client and server, with memory that grows only as bytes arrive.

package rpc

import (
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

// Sizes of a connection's buffers. The read buffer starts at minReadBuf, so
// that an idle connection holds little memory, and doubles up to maxReadBuf
// each time a read fills it. A frame that does not fit it moves to a buffer
// of its own, which starts at twice the bytes that arrived (at least
// minFrameBuf) and doubles as more arrive, up to the frame's length.
const (
	minReadBuf  = 4 << 10
	maxReadBuf  = 32 << 10
	minFrameBuf = 64 << 10
)

// maxEmptyReads is how many reads in a row may return nothing (and no
// error) before the connection counts as broken.
const maxEmptyReads = 100

// peekIDLen is how much of an oversized frame's body is read to find its call
// ID: an array32 header (5 bytes) plus a uint64 (9 bytes) fit.
const peekIDLen = 16

// frameReader reads the frames of one kind from a connection. It is used by
// one goroutine at a time (whoever holds the connection's reader role). A
// read that fails with a timeout (a read deadline) loses nothing: the next
// call to next resumes the frame where it stopped.
type frameReader struct {
	conn net.Conn
	max  int           // largest length prefix accepted
	kind byte          // the frame kind expected
	dl   *readDeadline // arms the server's read timeouts; nil on the client

	buf    []byte // read buffer: buf[r:w] arrived and is not consumed yet
	r, w   int
	filled bool  // the last read into buf filled it
	err    error // a read error that came with data, for the next read

	part   []byte // a frame too large for buf (from its version byte), as far as it arrived
	want   int    // that frame's length
	skip   uint64 // bytes of an oversized frame still to discard
	big    uint64 // call ID of that frame
	frames uint64 // frames read so far
}

func newFrameReader(conn net.Conn, max int, kind byte) *frameReader {
	return &frameReader{conn: conn, max: max, kind: kind}
}

// buffered returns how many bytes have arrived and wait to be read as
// frames.
func (r *frameReader) buffered() int { return r.w - r.r }

// midFrame reports whether part of a frame has arrived and the rest has not.
func (r *frameReader) midFrame() bool { return r.w > r.r || r.part != nil || r.skip > 0 }

// frameBuffered reports whether a whole frame within the limit is in the
// read buffer, so that next returns it without reading the connection.
func (r *frameReader) frameBuffered() bool {
	if r.skip > 0 || r.part != nil {
		return false
	}
	n := r.w - r.r
	if n < prefixLen {
		return false
	}
	l := uint64(binary.BigEndian.Uint32(r.buf[r.r:]))
	return l <= uint64(r.max) && uint64(n-prefixLen) >= l
}

// next reads one frame. Normally it returns the frame's body (the bytes after
// version and kind) in a fresh slice the caller owns. A frame longer than the
// limit is read past without being stored: next returns big=true and the call
// ID found at its start. Any error but a timeout means the connection is
// unusable.
func (r *frameReader) next() (body []byte, bigID uint64, big bool, err error) {
	if r.part != nil {
		return r.fillPart()
	}
	for {
		if r.skip > 0 {
			if r.skipBuffered() {
				return nil, r.big, true, nil
			}
		} else if avail := r.w - r.r; avail >= prefixLen {
			n := uint64(binary.BigEndian.Uint32(r.buf[r.r:]))
			switch {
			case n < frameHeadLen:
				return nil, 0, false, errShortFrame
			case n > uint64(r.max):
				if err := r.startSkip(n); err != nil {
					return nil, 0, false, err
				}
				if r.skip > 0 {
					continue // its head was buffered: skip it
				}
			case uint64(avail-prefixLen) >= n:
				return r.take(int(n))
			case avail == len(r.buf) && len(r.buf) >= maxReadBuf:
				// It fills the read buffer, which cannot grow: go on in a
				// buffer of its own.
				if err := r.startPart(int(n)); err != nil {
					return nil, 0, false, err
				}
				return r.fillPart()
			}
		}
		if err := r.more(); err != nil {
			return nil, 0, false, err
		}
	}
}

// take returns the whole frame of length n at the start of the read buffer.
func (r *frameReader) take(n int) (body []byte, bigID uint64, big bool, err error) {
	p := r.buf[r.r+prefixLen : r.r+prefixLen+n]
	r.r += prefixLen + n
	if r.r == r.w {
		r.r, r.w = 0, 0
	}
	r.frames++
	if err := r.checkHead(p); err != nil {
		return nil, 0, false, err
	}
	body = make([]byte, n-frameHeadLen)
	copy(body, p[frameHeadLen:])
	return body, 0, false, nil
}

// startPart moves the frame of length n filling the read buffer to a buffer
// of its own, sized for about twice what arrived.
func (r *frameReader) startPart(n int) error {
	have := r.buf[r.r+prefixLen : r.w]
	if err := r.checkHead(have); err != nil {
		return err
	}
	r.part = make([]byte, len(have), min(n, max(2*len(have), minFrameBuf)))
	copy(r.part, have)
	r.want = n
	r.r, r.w = 0, 0
	return nil
}

// fillPart reads the rest of the frame in r.part straight into it, doubling
// it whenever it is full.
func (r *frameReader) fillPart() (body []byte, bigID uint64, big bool, err error) {
	for len(r.part) < r.want {
		if len(r.part) == cap(r.part) {
			grown := make([]byte, len(r.part), min(r.want, 2*cap(r.part)))
			copy(grown, r.part)
			r.part = grown
		}
		n, err := r.read(r.part[len(r.part):cap(r.part)])
		r.part = r.part[:len(r.part)+n]
		if err != nil {
			return nil, 0, false, err
		}
	}
	body = r.part[frameHeadLen:]
	r.part = nil
	r.frames++
	return body, 0, false, nil
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

// startSkip begins reading past an oversized frame of length n, taking the
// call ID at its start, once enough of that start is buffered (otherwise it
// leaves r.skip 0 for the caller to read more).
func (r *frameReader) startSkip(n uint64) error {
	head := min(n, uint64(frameHeadLen+peekIDLen))
	if uint64(r.w-r.r) < prefixLen+head {
		return nil
	}
	p := r.buf[r.r+prefixLen : r.r+prefixLen+int(head)]
	if err := r.checkHead(p); err != nil {
		return err
	}
	id, ok := peekCallID(p[frameHeadLen:])
	if !ok {
		return errBadBigID
	}
	r.big, r.skip = id, n+prefixLen
	return nil
}

// skipBuffered discards the buffered bytes of an oversized frame and reports
// whether that was the rest of it.
func (r *frameReader) skipBuffered() bool {
	d := min(r.skip, uint64(r.w-r.r))
	r.r += int(d)
	r.skip -= d
	if r.skip > 0 {
		return false
	}
	r.frames++
	return true
}

// more reads from the connection into the read buffer, first moving what is
// left unread to its start, and doubling the buffer if the last read filled
// it (more was waiting, likely) or it is full.
func (r *frameReader) more() error {
	if r.r > 0 {
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	if r.w == len(r.buf) || (r.filled && len(r.buf) < maxReadBuf) {
		grown := make([]byte, min(max(2*len(r.buf), minReadBuf), maxReadBuf))
		copy(grown, r.buf[:r.w])
		r.buf = grown
	}
	n, err := r.read(r.buf[r.w:])
	r.w += n
	r.filled = n > 0 && r.w == len(r.buf)
	return err
}

// read reads into p. A read that returns data and an error returns the
// data, and the error on the next call. End of file in the middle of a
// frame is io.ErrUnexpectedEOF.
func (r *frameReader) read(p []byte) (int, error) {
	err := r.err
	r.err = nil
	for empty := 0; err == nil; empty++ {
		if empty == maxEmptyReads {
			return 0, io.ErrNoProgress
		}
		if r.dl != nil {
			r.dl.beforeRead(r.midFrame(), r.frames)
		}
		var n int
		n, err = r.conn.Read(p)
		if n > 0 {
			r.err = err
			return n, nil
		}
	}
	if err == io.EOF && r.midFrame() {
		err = io.ErrUnexpectedEOF
	}
	return 0, err
}
