// This file holds the Server: options and defaults, accepting within the caps, Close and Stats.

package rpc

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis/internal/ratelog"
)

// Handler answers one request. ctx ends when req.Timeout (if nonzero) passes,
// when the connection the request came on fails, or when the Server closes;
// handlers must return soon after, as Server.Close waits for them. The zero
// Response is an empty success. The Response's CallID is ignored, and its
// Payload is copied out before the response is sent, so the handler may
// reuse it once the Server is done with the call. The Response is returned
// by value so that answering a call allocates nothing.
//
// A handler may run on the goroutine that read its request, and requests of
// one connection may be handled one after another or side by side; handlers
// must be safe for concurrent use.
type Handler func(ctx context.Context, req *Request) Response

// Defaults of the ServerOptions limits.
const (
	DefaultFrameTimeout       = 10 * time.Second
	DefaultIdleTimeout        = 2 * time.Minute
	DefaultMaxConns           = 4096
	DefaultMaxConnsPerIP      = 512
	DefaultMaxInflightPerConn = 1024
)

// ServerOptions configures a Server. The zero value is usable: every limit
// then has its default. For the limits below, 0 means the default and a
// negative value means no limit.
type ServerOptions struct {
	// MaxFrameSize bounds request frames accepted and response frames sent,
	// counted as the length prefix value. 0 means DefaultMaxFrameSize;
	// smaller positive values are raised to MinMaxFrameSize.
	// Larger requests are answered with CodeFrameTooLarge, larger responses
	// replaced with CodeResponseTooLarge.
	MaxFrameSize int
	// FrameTimeout bounds how long a request frame may take to arrive whole
	// once the server waits for the rest of it; the connection is then
	// closed. 0 means DefaultFrameTimeout (10s).
	FrameTimeout time.Duration
	// IdleTimeout closes a connection that has had no request in flight and
	// no frame arriving for that long. 0 means DefaultIdleTimeout (2
	// minutes). Clients should drop idle connections sooner (see
	// ClientOptions.IdleTimeout), so that a call never races the close.
	IdleTimeout time.Duration
	// MaxConns bounds the connections served at once; a connection over it
	// is closed as soon as it is accepted. 0 means DefaultMaxConns (4096).
	MaxConns int
	// MaxConnsPerIP bounds the TCP connections served at once from one
	// remote IP address; a connection over it is closed as soon as it is
	// accepted. 0 means DefaultMaxConnsPerIP (512).
	MaxConnsPerIP int
	// MaxInflightPerConn bounds the requests of one connection being
	// handled (read and not yet answered) at once. At the cap the
	// connection stops reading until a request is answered, so the peer's
	// further requests wait (TCP flow control slows it down); nothing is
	// rejected. 0 means DefaultMaxInflightPerConn (1024).
	MaxInflightPerConn int
	// Logger receives reports of broken peers, limits reached and handler
	// panics, at most a few lines per minute of each kind. nil discards
	// them.
	Logger *slog.Logger
}

// Rate of the Server's log lines about events peers cause: at most
// logBurst lines of each kind per logEvery.
const (
	logEvery = time.Minute
	logBurst = 10
)

// Server answers calls arriving on listeners or connections handed to it.
// It is safe for concurrent use.
type Server struct {
	h      Handler
	lim    serverLimits
	log    *slog.Logger
	rl     *ratelog.Limiter // for events a peer can cause at will
	ctx    context.Context  // ends on Close; parent of every handler's ctx
	cancel context.CancelFunc
	stats  serverCounters

	// mu guards closed, listeners and conns. Lock order: mu before a
	// connection's frameWriter.mu (Close shuts the writers down holding it).
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     connTable

	wg sync.WaitGroup // Serve loops, connections (which wait for their handlers) and the monitor

	epoch      time.Time   // origin of the Server's nanosecond times
	monitoring atomic.Bool // the monitor goroutine runs
}

var errServerClosed = errors.New("rpc: server closed")

// NewServer returns a Server that answers calls with h.
func NewServer(h Handler, opts ServerOptions) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		h:         h,
		lim:       opts.limits(),
		log:       opts.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     connTable{all: make(map[*serverConn]struct{}), perIP: make(map[netip.Addr]int)},
		epoch:     time.Now(),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.rl = ratelog.New(s.log, logEvery, logBurst)
	return s
}

// now returns the time since the Server's epoch in nanoseconds.
func (s *Server) now() int64 { return int64(time.Since(s.epoch)) }

// Serve accepts connections on ln and serves each on its own goroutine until
// ln fails or the Server is closed. It closes ln before returning, and
// returns nil if the Server was closed, otherwise the Accept error.
// Connections over MaxConns or MaxConnsPerIP are closed at once.
func (s *Server) Serve(ln net.Listener) error {
	if !s.addListener(ln) {
		return nil
	}
	defer s.removeListener(ln)
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
			// Transient (e.g. out of file descriptors): back off and retry.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.rl.Warn("accept-failed", "rpc: accept failed; retrying", "err", err, "delay", backoff)
			if !s.sleep(backoff) {
				return nil
			}
			continue
		}
		backoff = 0
		sc, closed := s.track(conn)
		if closed {
			return nil
		}
		if sc != nil {
			go sc.readLoop()
		}
	}
}

// addListener registers ln, or closes it and reports false if the Server is
// closed.
func (s *Server) addListener(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = ln.Close()
		return false
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) removeListener(ln net.Listener) {
	_ = ln.Close()
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
	s.wg.Done()
}

// sleep waits for d, or reports false at once if the Server closes first.
func (s *Server) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// ServeConn serves one already-accepted connection and returns when it ends
// (the peer closed it or broke the protocol, a timeout passed, or the Server
// closed), after the handlers of its requests have returned. It closes conn.
// The connection counts towards MaxConns and MaxConnsPerIP, and is closed at
// once if it would exceed them.
func (s *Server) ServeConn(conn net.Conn) {
	if sc, _ := s.track(conn); sc != nil {
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
	for sc := range s.conns.all {
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

// Stats returns the Server's counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	n := len(s.conns.all)
	s.mu.Unlock()
	return s.stats.snapshot(n)
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers conn for serving. If the Server is closed (closed=true)
// or a connection cap refuses conn, it closes conn and returns nil.
func (s *Server) track(conn net.Conn) (sc *serverConn, closed bool) {
	ip := remoteIP(conn)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = conn.Close()
		return nil, true
	}
	if why := s.conns.refuseLocked(&s.lim, ip); why != "" {
		s.mu.Unlock()
		s.refused(why, conn)
		_ = conn.Close()
		return nil, false
	}
	sc = newServerConn(s, conn, ip)
	s.conns.addLocked(sc)
	s.wg.Add(1)
	s.mu.Unlock()
	s.stats.accepted.Add(1)
	return sc, false
}

// refused counts and logs a connection closed on arrival by cap why.
func (s *Server) refused(why refusal, conn net.Conn) {
	if why == refusedMaxConnsPerIP {
		s.stats.refusedMaxConnsPerIP.Add(1)
		s.rl.Warn("refused-per-ip", "rpc: connection refused: MaxConnsPerIP reached",
			"remote", conn.RemoteAddr(), "limit", s.lim.maxConnsPerIP)
		return
	}
	s.stats.refusedMaxConns.Add(1)
	s.rl.Warn("refused-total", "rpc: connection refused: MaxConns reached",
		"remote", conn.RemoteAddr(), "limit", s.lim.maxConns)
}

// release removes sc from the Server once it is cleaned up.
func (s *Server) release(sc *serverConn) {
	s.mu.Lock()
	s.conns.removeLocked(sc)
	s.mu.Unlock()
}
