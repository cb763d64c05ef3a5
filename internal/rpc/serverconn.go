// This file holds one served connection: the reader role, limits applied while reading, replies.

package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// serverConn is one connection being served.
//
// Reading is a role that passes between goroutines. The reader that decodes a
// request runs the handler itself, so the handler starts without waiting for
// a goroutine switch, and keeps the role while it does:
//   - with nothing else buffered, it reads on once the handler returns, so
//     fast handlers cost no goroutine wake-up at all (on a small VM a
//     wake-up costs as much as the rest of the call);
//   - with more whole requests buffered and handlers that have been fast,
//     it runs them one after another and answers them in one write;
//   - with more requests buffered and handlers that may take a while, or
//     with handlers that have been slow (slowHandlerTime), it first hands the
//     role on, so they run side by side (see keepRole).
//
// A handler that still runs after handoffDelay loses the role to another
// goroutine, so later requests are not held up (see monitor.go), and makes
// the handlers count as slow at once: the requests already read behind it
// run side by side without waiting for the monitor one by one. The role
// goes to a spare (a goroutine that finished a handler and parked, its stack
// already grown) or, when none is parked, to a new goroutine, which first
// writes the answers queued before the slow handler.
//
// The reader stops reading while MaxInflightPerConn requests are in flight
// (gate), and closes the connection when a frame takes longer than
// FrameTimeout or the connection idles for IdleTimeout (fr.dl).
type serverConn struct {
	s      *Server
	conn   net.Conn
	ip     netip.Addr      // remote IP, for MaxConnsPerIP; zero if none
	fr     *frameReader    // used only by the goroutine holding the reader role
	ctx    context.Context // ends when the connection ends; parent of handler ctxs
	cancel context.CancelFunc
	w      frameWriter
	done   chan struct{} // closed when the connection is cleaned up

	handlers   sync.WaitGroup
	gate       inflightGate // requests read and not yet answered
	lastActive atomic.Int64 // when a request was last answered (or the connection started), ns since the Server's epoch

	// heldSince is when the reader started running a handler with the role
	// held (nanoseconds since the Server's epoch), 0 when not held. Whoever
	// moves it to 0 first decides: the reader keeps reading, or the
	// monitor passes the role on.
	heldSince atomic.Int64
	// handlerNanos is a moving average of the time handlers take.
	handlerNanos atomic.Int64

	wake   chan struct{}  // a send hands the reader role to a parked spare
	stop   chan struct{}  // closed by finish: spares exit
	spares atomic.Int32   // goroutines parked (or about to park) as spares
	parked sync.WaitGroup // spares, for finish to wait on
}

// maxSpares bounds the parked spare goroutines per connection.
const maxSpares = 4

// maxQueuedReplies bounds the bytes of responses that wait for their batch
// to be written.
const maxQueuedReplies = 64 << 10

// maxQueuedWrite bounds the bytes of answers waiting behind a write in
// progress: a handler whose answer would go beyond waits for the write to
// finish, so a peer that does not read its answers cannot make the Server
// buffer them without end (and, the handler still counting as in flight,
// the connection stops reading at MaxInflightPerConn).
const maxQueuedWrite = 1 << 20

func newServerConn(s *Server, conn net.Conn, ip netip.Addr) *serverConn {
	ctx, cancel := context.WithCancel(s.ctx)
	sc := &serverConn{
		s:      s,
		conn:   conn,
		ip:     ip,
		fr:     newFrameReader(conn, s.lim.maxFrame, KindRequest),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		gate:   newInflightGate(s.lim.maxInflight),
		wake:   make(chan struct{}),
		stop:   make(chan struct{}),
	}
	now := s.now()
	sc.lastActive.Store(now)
	sc.fr.dl = newReadDeadline(conn, s.epoch, now, s.lim.frameTimeout, s.lim.idleTimeout)
	sc.w.conn = conn
	sc.w.onError = sc.writeFailed
	sc.w.stalls = &s.stats.writeStalls
	return sc
}

// readLoop reads frames until it passes the reader role on (after decoding a
// request, which it then handles) or the connection ends. After handling,
// the goroutine parks as a spare and reads again when woken.
func (sc *serverConn) readLoop() {
	for sc.readOne() {
	}
}

// readOne reads until it has handled one request, and reports whether this
// goroutine was then woken from the spares to read again.
func (sc *serverConn) readOne() bool {
	// The role may come from a reader whose handler turned out slow after
	// it queued answers (see reply): write them before reading, which may
	// block.
	sc.flush()
	for {
		sc.waitForRoom()
		body, bigID, big, err := sc.fr.next()
		if err != nil {
			if sc.readFailed(err) {
				continue
			}
			sc.finish()
			return false
		}
		if big {
			sc.answerOversized(bigID)
			continue
		}
		in := new(inbound)
		if err := decodeRequest(body, &in.req); err != nil {
			sc.s.stats.malformed.Add(1)
			sc.s.rl.Warn("malformed-request", "rpc: closing connection: malformed request",
				"remote", sc.conn.RemoteAddr(), "err", err)
			sc.finish()
			return false
		}
		sc.handlers.Add(1)
		sc.gate.add()
		if !sc.keepRole() {
			// Handlers may take a while and more requests are already
			// here, or handlers are slow: let another goroutine read on
			// while this one runs the handler.
			sc.passRole()
			sc.handle(in)
		} else if sc.handleHoldingRole(in) {
			continue
		}
		return sc.park()
	}
}

// handleHoldingRole runs the handler of in keeping the reader role (nothing
// else is there to read yet, or only whole requests for fast handlers) and
// answers it. It reports whether this goroutine still holds the role: if
// the handler ran for handoffDelay, the monitor passed the role on.
func (sc *serverConn) handleHoldingRole(in *inbound) bool {
	since := max(sc.s.now(), 1)
	sc.heldSince.Store(since)
	sc.s.ensureMonitor()
	resp := sc.run(in, since)
	if !sc.heldSince.CompareAndSwap(since, 0) {
		// The monitor passed the role on (and the new reader writes what
		// waited): answer, then become a spare.
		sc.reply(in.req.CallID, &resp, false)
		return false
	}
	// Still the reader. If another whole request is buffered, it is read
	// and answered next without blocking: this response waits for that
	// batch, and the batch goes out in one write.
	sc.reply(in.req.CallID, &resp, sc.fr.frameBuffered())
	sc.handlers.Done()
	return true
}

// park makes this goroutine, done with its request, a spare until the
// reader role is handed to it, and reports whether it was; with maxSpares
// parked already, it exits at once.
func (sc *serverConn) park() bool {
	// Register as a spare before leaving the handlers, so that finish,
	// once no handler is left, also waits for every spare.
	spare := sc.spares.Add(1) <= maxSpares
	if spare {
		sc.parked.Add(1)
	} else {
		sc.spares.Add(-1)
	}
	sc.handlers.Done()
	if !spare {
		return false
	}
	woken := false
	select {
	case <-sc.wake:
		woken = true
	case <-sc.stop:
	}
	sc.spares.Add(-1)
	sc.parked.Done()
	return woken
}

// passRole hands the reader role to a parked spare or a new goroutine.
func (sc *serverConn) passRole() {
	select {
	case sc.wake <- struct{}{}:
	default:
		go sc.readLoop()
	}
}

// waitForRoom holds the reader back while MaxInflightPerConn requests are in
// flight, until one is answered or the connection ends. The peer's further
// requests wait in the socket buffers meanwhile.
func (sc *serverConn) waitForRoom() {
	if !sc.gate.full() {
		return
	}
	s := sc.s
	sc.flush() // answers queued for a batch must not wait for the cap
	s.stats.inflightPauses.Add(1)
	s.rl.Warn("inflight-cap", "rpc: connection paused: MaxInflightPerConn requests in flight",
		"remote", sc.conn.RemoteAddr(), "limit", s.lim.maxInflight)
	sc.gate.wait(sc.ctx.Done())
	if sc.fr.dl != nil {
		sc.fr.dl.resume() // the pause does not count against the peer
	}
}

// readFailed handles an error from the frame reader. A read deadline that
// did not time the connection out arms the next one, and readFailed reports
// true: read on. Anything else is counted and logged, and the connection is
// to end.
func (sc *serverConn) readFailed(err error) bool {
	s := sc.s
	if isTimeout(err) && sc.fr.dl != nil {
		v, next := sc.fr.dl.judge(s.now(), sc.fr.midFrame(), sc.fr.frames, sc.gate.busy(), sc.lastActive.Load())
		switch v {
		case timeoutNotYet:
			sc.fr.dl.arm(next)
			return true
		case timeoutIdle:
			s.stats.closedIdle.Add(1)
			s.rl.Log(slog.LevelDebug, "idle-timeout", "rpc: closing idle connection",
				"remote", sc.conn.RemoteAddr(), "timeout", s.lim.idleTimeout)
		case timeoutFrame:
			s.stats.closedFrameTimeout.Add(1)
			s.rl.Warn("frame-timeout", "rpc: closing connection: frame not received within FrameTimeout",
				"remote", sc.conn.RemoteAddr(), "timeout", s.lim.frameTimeout)
		}
		return false
	}
	switch {
	case isProtocolError(err):
		s.stats.malformed.Add(1)
		s.rl.Warn("broken-peer", "rpc: closing connection: broken peer", "remote", sc.conn.RemoteAddr(), "err", err)
	case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !s.isClosed():
		s.rl.Log(slog.LevelDebug, "conn-failed", "rpc: connection failed", "remote", sc.conn.RemoteAddr(), "err", err)
	}
	return false
}

// answerOversized answers call id, whose frame exceeded MaxFrameSize and
// was read past, with CodeFrameTooLarge.
func (sc *serverConn) answerOversized(id uint64) {
	s := sc.s
	s.stats.oversized.Add(1)
	s.rl.Warn("frame-too-large", "rpc: request frame over MaxFrameSize answered with an error",
		"remote", sc.conn.RemoteAddr(), "limit", s.lim.maxFrame)
	sc.lastActive.Store(s.now())
	sc.gate.add()
	sc.reply(id, &Response{Err: &ErrorInfo{
		Code:    CodeFrameTooLarge,
		Message: fmt.Sprintf("request frame exceeds the server limit of %d bytes", s.lim.maxFrame),
	}}, false)
}

// finish cleans up after the last reader: it stops writes, closes the
// connection, cancels and waits for the handlers, then releases the
// connection from the Server.
func (sc *serverConn) finish() {
	sc.w.shutdown(net.ErrClosed)
	_ = sc.conn.Close()
	sc.cancel()
	close(sc.stop)
	sc.handlers.Wait()
	sc.parked.Wait()
	sc.s.release(sc)
	close(sc.done)
	sc.s.wg.Done()
}

// reply sends resp as the answer to call id, replacing it with a
// CodeResponseTooLarge error if it does not fit the frame limit.
//
// With queue set the response is only queued (unless the queue has grown
// past maxQueuedReplies): the caller holds the reader role and will answer
// another whole buffered request, which writes the batch, before it reads
// again; if that handler turns out slow, the reader the role passes to
// writes the batch first thing.
func (sc *serverConn) reply(id uint64, resp *Response, queue bool) {
	limit := sc.s.lim.maxFrame
	if n := responseFrameLen(resp, id); n > limit {
		resp = &Response{Err: &ErrorInfo{
			Code:    CodeResponseTooLarge,
			Message: fmt.Sprintf("response frame of %d bytes exceeds the server limit of %d bytes", n, limit),
		}}
		if responseFrameLen(resp, id) > limit {
			resp.Err.Message = ""
		}
	}
	waited, err := sc.w.lockBounded(maxQueuedWrite)
	if waited {
		sc.writeStalled()
	}
	if err != nil {
		sc.gate.done()
		return // connection gone; the caller learns from its side
	}
	sc.w.buf = appendResponseFrame(sc.w.buf, resp, id)
	busy := sc.gate.done()
	if queue && len(sc.w.buf) < maxQueuedReplies {
		sc.w.unlock()
		return
	}
	_ = sc.w.commit(busy)
}

// writeStalled logs an answer that waited for the peer to read earlier
// ones (the writer counted it).
func (sc *serverConn) writeStalled() {
	s := sc.s
	s.rl.Warn("write-stall", "rpc: answers wait: the peer reads them too slowly",
		"remote", sc.conn.RemoteAddr(), "queued", maxQueuedWrite)
}

// flush writes the queued responses, unless a write is under way (which
// writes them too).
func (sc *serverConn) flush() {
	if sc.w.lock() == nil {
		_ = sc.w.commit(false)
	}
}

// writeFailed ends the connection after a failed write: its handlers are
// cancelled at once (the reader may be waiting for room rather than
// reading), and the reader then fails and cleans up.
func (sc *serverConn) writeFailed(error) {
	sc.cancel()
	_ = sc.conn.Close()
}
