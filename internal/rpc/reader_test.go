// This file tests the frame reader against a reference parser over streams cut into reads.

package rpc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// chunkConn is a net.Conn whose reads return a stream in chunks of the
// sizes given, over and over; a size of 0 is a read that times out. Only
// Read is implemented.
type chunkConn struct {
	net.Conn
	data  []byte
	sizes []int
	i     int
	fed   int // bytes returned so far
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	size := 1 << 20
	if len(c.sizes) > 0 {
		size = c.sizes[c.i%len(c.sizes)]
		c.i++
	}
	if size == 0 {
		return 0, os.ErrDeadlineExceeded
	}
	n := copy(p, c.data[:min(size, len(c.data))])
	c.data = c.data[n:]
	c.fed += n
	return n, nil
}

// refFrame is one frame as the reference parser sees it.
type refFrame struct {
	body  []byte
	big   bool
	bigID uint64
}

// refFrames parses a whole stream the simple way and returns its frames and
// the error that ends it (io.EOF at a frame boundary).
func refFrames(stream []byte, max int, kind byte) ([]refFrame, error) {
	var out []refFrame
	for len(stream) > 0 {
		if len(stream) < prefixLen {
			return out, io.ErrUnexpectedEOF
		}
		n := uint64(binary.BigEndian.Uint32(stream))
		rest := stream[prefixLen:]
		if n < frameHeadLen {
			return out, errShortFrame
		}
		head := rest[:min(uint64(len(rest)), n, frameHeadLen+peekIDLen)]
		if n > uint64(max) && uint64(len(head)) < min(n, frameHeadLen+peekIDLen) {
			return out, io.ErrUnexpectedEOF
		}
		if n > uint64(max) || uint64(len(rest)) >= n {
			if err := refCheckHead(head, kind); err != nil {
				return out, err
			}
		}
		if n > uint64(max) {
			id, ok := peekCallID(head[frameHeadLen:])
			if !ok {
				return out, errBadBigID
			}
			if uint64(len(rest)) < n {
				return out, io.ErrUnexpectedEOF
			}
			out = append(out, refFrame{big: true, bigID: id})
		} else {
			if uint64(len(rest)) < n {
				return out, io.ErrUnexpectedEOF
			}
			out = append(out, refFrame{body: rest[frameHeadLen:n]})
		}
		stream = rest[n:]
	}
	return out, io.EOF
}

func refCheckHead(head []byte, kind byte) error {
	if head[0] != Version {
		return errBadVersion
	}
	if head[1] != kind {
		return errBadKind
	}
	return nil
}

// checkFrameReader reads stream through a frameReader over a chunkConn cut
// by sizes and compares it with the reference parser. A timeout is retried;
// the memory the reader holds must stay within a small multiple of the
// bytes that arrived.
func checkFrameReader(t testing.TB, stream []byte, sizes []int, limit int, kind byte) []refFrame {
	want, wantErr := refFrames(stream, limit, kind)
	conn := &chunkConn{data: stream, sizes: sizes}
	fr := newFrameReader(conn, limit, kind)
	var got []refFrame
	for {
		body, bigID, big, err := fr.next()
		if held := cap(fr.buf) + cap(fr.part); held > maxReadBuf+max(2*conn.fed, minFrameBuf) {
			t.Fatalf("reader holds %d bytes after %d arrived", held, conn.fed)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			if len(got) != len(want) {
				t.Fatalf("got %d frames, want %d (err %v, want %v)", len(got), len(want), err, wantErr)
			}
			// The reader may reject a bad header before the frame is whole.
			if err != wantErr && !(wantErr == io.ErrUnexpectedEOF && isProtocolError(err)) {
				t.Fatalf("ended with %v, want %v", err, wantErr)
			}
			return got
		}
		if len(got) == len(want) {
			t.Fatalf("frame %d read, reference ended with %v", len(got), wantErr)
		}
		w := want[len(got)]
		if big != w.big || bigID != w.bigID || !bytes.Equal(body, w.body) {
			t.Fatalf("frame %d differs: big %v/%v id %d/%d body %d/%d bytes",
				len(got), big, w.big, bigID, w.bigID, len(body), len(w.body))
		}
		got = append(got, refFrame{body: body, big: big, bigID: bigID})
	}
}

func TestFrameReaderMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	for _, size := range []int{0, 1, 10, 1000, minReadBuf - 10, minReadBuf + 10, maxReadBuf - 6, maxReadBuf - 5,
		maxReadBuf, 100 << 10, 300 << 10, 1 << 20} {
		stream = appendRequestFrame(stream, &Request{Method: "m", Payload: make([]byte, size)}, uint64(size+1), 0)
	}
	stream = appendRequestFrame(stream, &Request{Payload: make([]byte, 3<<20)}, 77, 0) // over the limit below
	stream = appendRequestFrame(stream, &Request{Payload: []byte("last")}, 78, 0)
	cuts := map[string][]int{
		"whole":    nil,
		"bytes":    {1},
		"small":    {3, 0, 7, 1, 0, 100},
		"pages":    {4096, 0, 1 << 16},
		"timeouts": {0, 0, 5000, 0},
	}
	random := make([]int, 1000)
	for i := range random {
		random[i] = rng.IntN(70000)
	}
	cuts["random"] = random
	for name, sizes := range cuts {
		t.Run(name, func(t *testing.T) {
			frames := checkFrameReader(t, stream, sizes, 2<<20, KindRequest)
			require.Equal(t, 14, len(frames))
			require.True(t, frames[12].big)
			require.Equal(t, uint64(77), frames[12].bigID)
		})
	}
	// Streams cut short anywhere end with io.ErrUnexpectedEOF, never with
	// a frame made up of what arrived.
	for range 200 {
		n := rng.IntN(len(stream))
		checkFrameReader(t, stream[:n], random[rng.IntN(len(random)):], 2<<20, KindRequest)
	}
}

// A length prefix announcing a large frame costs nothing until the frame's
// bytes arrive, and then no more than about twice what arrived.
func TestFrameReaderMemoryFollowsArrivingBytes(t *testing.T) {
	frame := appendRequestFrame(nil, &Request{Payload: make([]byte, 4<<20-100)}, 1, 0)
	fr := newFrameReader(nil, 8<<20, KindRequest)
	for _, arrived := range []int{prefixLen, 100, 40 << 10, 200 << 10, 1 << 20, len(frame)} {
		fr.conn = &chunkConn{data: frame[:arrived], sizes: []int{1 << 20}}
		fr2 := *fr // read the same prefix of the stream from scratch
		_, _, _, err := fr2.next()
		if arrived == len(frame) {
			require.NoError(t, err)
			continue
		}
		require.ErrorIs(t, err, io.ErrUnexpectedEOF)
		held := cap(fr2.buf) + cap(fr2.part)
		t.Logf("%d bytes arrived: reader holds %d", arrived, held)
		require.LessOrEqual(t, held, max(2*arrived, minFrameBuf)+maxReadBuf)
	}
}
