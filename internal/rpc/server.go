// This file implements the answering side: a Server reads requests from
// each connection on one goroutine, runs every request's handler on its own
// goroutine and writes the responses through the batching writer.

package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Handler answers one request. ctx ends when req.Timeout (if nonzero) passes,
// when the connection the request came on fails, or when the Server closes;
// handlers must return soon after, as Server.Close waits for them. The zero
// Response is an empty success. The Response's CallID is ignored, and its
// Payload is copied out before the response is sent, so the handler may
// reuse it once the Server is done with the call. The Response is returned
// by value so that answering a call allocates nothing.
type Handler func(ctx context.Context, req *Request) Response

// ServerOptions configures a Server. The zero value is usable.
type ServerOptions struct {
	// MaxFrameSize bounds request frames accepted and response frames sent,
	// counted as the length prefix value. 0 means DefaultMaxFrameSize;
	// smaller positive values are raised to MinMaxFrameSize.
	// Larger requests are answered with CodeFrameTooLarge, larger responses
	// replaced with CodeResponseTooLarge.
	MaxFrameSize int
	// Logger receives reports of broken peers and handler panics. nil
	// discards them.
	Logger *slog.Logger
}

// Server answers calls arriving on listeners or connections handed to it.
// It is safe for concurrent use.
type Server struct {
	h        Handler
	maxFrame int
	log      *slog.Logger
	ctx      context.Context // ends on Close; parent of every handler's ctx
	cancel   context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}

	wg sync.WaitGroup // Serve loops, connections (which wait for their handlers) and the monitor

	epoch      time.Time   // origin of serverConn.heldSince
	monitoring atomic.Bool // the monitor goroutine runs
}

var errServerClosed = errors.New("rpc: server closed")

// NewServer returns a Server that answers calls with h.
func NewServer(h Handler, opts ServerOptions) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		h:         h,
		maxFrame:  normMaxFrame(opts.MaxFrameSize),
		log:       opts.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
		epoch:     time.Now(),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

// Serve accepts connections on ln and serves each on its own goroutine until
// ln fails or the Server is closed. It closes ln before returning, and
// returns nil if the Server was closed, otherwise the Accept error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		_ = ln.Close()
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		s.wg.Done()
	}()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Transient (e.g. out of file descriptors): back off and retry.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("rpc: accept failed; retrying", "err", err, "delay", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-s.ctx.Done():
					t.Stop()
					return nil
				}
				continue
			}
			return err
		}
		backoff = 0
		sc := s.track(conn)
		if sc == nil {
			return nil
		}
		go sc.readLoop()
	}
}

// ServeConn serves one already-accepted connection and returns when it ends
// (the peer closed it or broke the protocol, or the Server closed), after the
// handlers of its requests have returned. It closes conn.
func (s *Server) ServeConn(conn net.Conn) {
	if sc := s.track(conn); sc != nil {
		go sc.readLoop()
		<-sc.done
	}
}

// Close stops accepting, closes every connection, cancels handler contexts
// and waits for every goroutine of the Server, running handlers included.
// Responses of handlers still running are dropped. It is safe to call more
// than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	for sc := range s.conns {
		// Stop writes first, so callers see the connection break rather
		// than answers of handlers cut short by the cancellation below.
		sc.w.shutdown(errServerClosed)
		_ = sc.conn.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers conn, or closes it and returns nil if the Server is closed.
func (s *Server) track(conn net.Conn) *serverConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = conn.Close()
		return nil
	}
	ctx, cancel := context.WithCancel(s.ctx)
	sc := &serverConn{
		s:      s,
		conn:   conn,
		fr:     newFrameReader(conn, s.maxFrame, KindRequest),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		wake:   make(chan struct{}),
		stop:   make(chan struct{}),
	}
	sc.w.conn = conn
	sc.w.onError = sc.writeFailed
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	return sc
}

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
//   - with more requests buffered and handlers that may take a while, it
//     first hands the role on, so they run side by side.
//
// A handler that still runs after handoffDelay loses the role to another
// goroutine, so later requests are not held up. One monitor goroutine per
// Server checks this, ticking while roles are held and exiting after a quiet
// spell (a timer per request would wake the network poller on every call).
// The role goes to a spare (a goroutine that finished a handler and parked,
// its stack already grown) or, when none is parked, to a new goroutine,
// which first writes the answers queued before the slow handler.
type serverConn struct {
	s      *Server
	conn   net.Conn
	fr     *frameReader
	ctx    context.Context // ends when the connection ends; parent of handler ctxs
	cancel context.CancelFunc
	w      frameWriter
	done   chan struct{} // closed when the connection is cleaned up

	handlers sync.WaitGroup
	inflight atomic.Int32 // requests read and not yet answered

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

// handoffDelay is how long a handler may run before the reader role it
// holds passes to another goroutine. A request arriving on the same
// connection behind a slow handler waits at most about twice this long
// before being read.
const handoffDelay = time.Millisecond

// monitorQuiet is how many ticks without a held role the monitor waits
// before it exits.
const monitorQuiet = 100

// readLoop reads frames until it passes the reader role on (after decoding a
// request, which it then handles) or the connection fails. After handling,
// the goroutine parks as a spare and reads again when woken.
func (sc *serverConn) readLoop() {
	for sc.readOne() {
	}
}

// readOne reads until it has handled one request, and reports whether this
// goroutine was then woken from the spares to read again.
func (sc *serverConn) readOne() bool {
	s := sc.s
	// The role may come from a reader whose handler turned out slow after
	// it queued answers (see reply): write them before reading, which may
	// block.
	sc.flush()
	for {
		body, bigID, big, err := sc.fr.next()
		if err != nil {
			switch {
			case isProtocolError(err):
				s.log.Warn("rpc: closing connection: broken peer", "remote", sc.conn.RemoteAddr(), "err", err)
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !s.isClosed():
				s.log.Debug("rpc: connection failed", "remote", sc.conn.RemoteAddr(), "err", err)
			}
			sc.finish()
			return false
		}
		if big {
			sc.inflight.Add(1)
			sc.reply(bigID, &Response{Err: &ErrorInfo{
				Code:    CodeFrameTooLarge,
				Message: fmt.Sprintf("request frame exceeds the server limit of %d bytes", s.maxFrame),
			}}, false)
			continue
		}
		in := new(inbound)
		req := &in.req
		if err := decodeRequest(body, req); err != nil {
			s.log.Warn("rpc: closing connection: malformed request", "remote", sc.conn.RemoteAddr(), "err", err)
			sc.finish()
			return false
		}
		sc.handlers.Add(1)
		sc.inflight.Add(1)
		if sc.fr.buffered() > 0 && !(sc.fastHandlers() && sc.fr.frameBuffered()) {
			// More requests are already here and handlers may take a
			// while: let another goroutine read them while this one runs
			// the handler.
			sc.passRole()
			sc.handle(in)
		} else {
			// Nothing else to read yet, or only whole requests for fast
			// handlers: run the handler keeping the role.
			since := max(int64(time.Since(s.epoch)), 1)
			sc.heldSince.Store(since)
			s.ensureMonitor()
			resp := sc.run(in, since)
			if sc.heldSince.CompareAndSwap(since, 0) {
				// Still the reader. If another whole request is buffered,
				// it is read and answered next without blocking: this
				// response waits for that batch, and the batch goes out
				// in one write.
				sc.reply(in.req.CallID, &resp, sc.fr.frameBuffered())
				sc.handlers.Done()
				continue
			}
			// The monitor passed the role on (and wrote out what waited):
			// this goroutine answers, then becomes a spare.
			sc.reply(in.req.CallID, &resp, false)
		}
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
}

// passRole hands the reader role to a parked spare or a new goroutine.
func (sc *serverConn) passRole() {
	select {
	case sc.wake <- struct{}{}:
	default:
		go sc.readLoop()
	}
}

// ensureMonitor starts the monitor if it is not running. A reader calls it
// while holding a connection (and so the Server's WaitGroup) open.
func (s *Server) ensureMonitor() {
	if !s.monitoring.Load() && s.monitoring.CompareAndSwap(false, true) {
		s.wg.Add(1)
		go s.monitor()
	}
}

// monitor passes on reader roles held by handlers for handoffDelay, until no
// role has been held for monitorQuiet ticks or the Server closes.
func (s *Server) monitor() {
	defer s.wg.Done()
	t := time.NewTicker(handoffDelay)
	defer t.Stop()
	quiet := 0
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if s.passHeldRoles() {
			quiet = 0
			continue
		}
		if quiet++; quiet < monitorQuiet {
			continue
		}
		s.monitoring.Store(false)
		// A role taken just before the Store found the monitor running:
		// look again, and go on unless another monitor was started.
		if !s.passHeldRoles() || !s.monitoring.CompareAndSwap(false, true) {
			return
		}
		quiet = 0
	}
}

// passHeldRoles passes on every role held for handoffDelay and reports
// whether any role was held.
func (s *Server) passHeldRoles() bool {
	now := int64(time.Since(s.epoch))
	held := false
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		h := sc.heldSince.Load()
		if h == 0 {
			continue
		}
		held = true
		if now-h >= int64(handoffDelay) && sc.heldSince.CompareAndSwap(h, 0) {
			sc.passRole() // the new reader writes what was queued
		}
	}
	return held
}

// finish cleans up after the last reader: it stops writes, closes the
// connection, cancels and waits for the handlers, then releases the
// connection from the Server.
func (sc *serverConn) finish() {
	s := sc.s
	sc.w.shutdown(net.ErrClosed)
	_ = sc.conn.Close()
	sc.cancel()
	close(sc.stop)
	sc.handlers.Wait()
	sc.parked.Wait()
	s.mu.Lock()
	delete(s.conns, sc)
	s.mu.Unlock()
	close(sc.done)
	s.wg.Done()
}

// inbound is one request being served: the request and the handler's
// context, allocated together.
type inbound struct {
	req Request
	dc  deadlineCtx
}

// handle runs the handler for in's request and sends its response.
func (sc *serverConn) handle(in *inbound) {
	resp := sc.run(in, int64(time.Since(sc.s.epoch)))
	sc.reply(in.req.CallID, &resp, false)
}

// run runs the handler for in's request, which started at start
// (nanoseconds since the Server's epoch), and returns its response. It
// keeps the average handler time up to date.
func (sc *serverConn) run(in *inbound, start int64) Response {
	req := &in.req
	var resp Response
	if req.Timeout != 0 {
		in.dc.Context, in.dc.deadline = sc.ctx, time.Now().Add(req.Timeout)
		resp = sc.s.invoke(&in.dc, req)
		in.dc.release()
	} else {
		resp = sc.s.invoke(sc.ctx, req)
	}
	d := int64(time.Since(sc.s.epoch)) - start
	avg := sc.handlerNanos.Load()
	sc.handlerNanos.Store(avg + (d-avg)/8) // racy between goroutines: an estimate
	return resp
}

// fastHandlers reports whether handlers on this connection have lately
// been quick enough to run one after another with the reader role held.
func (sc *serverConn) fastHandlers() bool {
	return sc.handlerNanos.Load() < int64(inlineHandlerTime)
}

// inlineHandlerTime is the average handler time below which a reader with
// several whole requests buffered runs them one after another and answers
// them in one write, instead of handing each next one to another goroutine.
// Above it, handlers run side by side. The monitor still hands the role on
// from any one handler that runs for handoffDelay.
const inlineHandlerTime = 20 * time.Microsecond

// maxQueuedReplies bounds the bytes of responses that wait for their batch
// to be written.
const maxQueuedReplies = 64 << 10

// deadlineCtx is the handler's context when the call has a timeout. It
// behaves as context.WithDeadline(parent, deadline) followed by cancel once
// the handler returns, but builds that context (a timer, a channel and a
// goroutine-free cancel hook: four allocations) only when the handler asks
// for Done. Handlers that finish without waiting on their context (most
// fast ones) pay for the struct alone.
type deadlineCtx struct {
	context.Context // the connection's context
	deadline        time.Time

	mu       sync.Mutex
	inner    context.Context // built by Done
	cancel   context.CancelFunc
	released bool
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *deadlineCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inner == nil {
		c.inner, c.cancel = context.WithDeadline(c.Context, c.deadline)
		if c.released {
			c.cancel()
		}
	}
	return c.inner.Done()
}

func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	inner, released := c.inner, c.released
	c.mu.Unlock()
	switch {
	case inner != nil:
		return inner.Err()
	case c.Context.Err() != nil:
		return c.Context.Err()
	case !time.Now().Before(c.deadline):
		return context.DeadlineExceeded
	case released:
		return context.Canceled
	}
	return nil
}

// release ends the context once the handler has returned.
func (c *deadlineCtx) release() {
	c.mu.Lock()
	c.released = true
	if c.cancel != nil {
		c.cancel()
	}
	c.mu.Unlock()
}

// invoke runs the handler, turning a panic into an error response.
func (s *Server) invoke(ctx context.Context, req *Request) (resp Response) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("rpc: handler panicked", "service", req.Service, "method", req.Method, "panic", v)
			resp = Response{Err: &ErrorInfo{Code: CodePanic, Message: fmt.Sprint(v)}}
		}
	}()
	return s.h(ctx, req)
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
	limit := sc.s.maxFrame
	if n := responseFrameLen(resp, id); n > limit {
		resp = &Response{Err: &ErrorInfo{
			Code:    CodeResponseTooLarge,
			Message: fmt.Sprintf("response frame of %d bytes exceeds the server limit of %d bytes", n, limit),
		}}
		if responseFrameLen(resp, id) > limit {
			resp.Err.Message = ""
		}
	}
	busy := sc.inflight.Add(-1) > 0
	if sc.w.lock() != nil {
		return // connection gone; the caller learns from its side
	}
	sc.w.buf = appendResponseFrame(sc.w.buf, resp, id)
	if queue && len(sc.w.buf) < maxQueuedReplies {
		sc.w.unlock()
		return
	}
	_ = sc.w.commit(busy)
}

// flush writes the queued responses, unless a write is under way (which
// writes them too).
func (sc *serverConn) flush() {
	if sc.w.lock() == nil {
		_ = sc.w.commit(false)
	}
}

func (sc *serverConn) writeFailed(error) {
	_ = sc.conn.Close() // the reader then fails and cleans up
}
