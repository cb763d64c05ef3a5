// This file wraps call connections in TLS: DialTLS for the calling end and
// a Listener that hands out only connections whose handshake completed.

package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// DialTLS runs the client handshake on conn with node peerNode, giving up
// when ctx ends (give it a deadline: a stalled server is waited for
// otherwise), and returns the TLS connection. On failure it closes conn
// and returns an error naming the peer's address; trust failures match
// ErrUntrustedPeer, and a handshake cut short by ctx matches ctx.Err().
//
// In TLS 1.3 a client's handshake completes before the server has checked
// the client's certificate: a server refusing it is seen at the first
// Read, as a "remote error" naming the TLS alert, which ExplainRefusal
// turns into an error matching ErrUntrustedPeer.
func (c *Creds) DialTLS(ctx context.Context, conn net.Conn, peerNode string) (*tls.Conn, error) {
	tc := tls.Client(conn, c.Client(peerNode))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, c.handshakeError(conn.RemoteAddr(), err)
	}
	return tc, nil
}

// handshakeError wraps a failed handshake's err with the peer's address
// and, when the peer refused our certificate, what to check.
func (c *Creds) handshakeError(addr net.Addr, err error) error {
	if peerRefused(err) {
		err = untrusted(err, "the peer refused our certificate (%v; %s)", err, c.v.hint)
	}
	return fmt.Errorf("aegis: TLS handshake with %s failed: %w", addrString(addr), err)
}

func addrString(a net.Addr) string {
	if a == nil {
		return "an unknown address"
	}
	return a.String()
}

// ListenerOptions configures a Listener. The zero value is usable.
type ListenerOptions struct {
	// HandshakeTimeout bounds each handshake; a client that has not
	// finished by then is disconnected. 0 means 10 seconds.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the connections accepted but not yet handed out
	// by Accept; while that many are pending, no more are accepted (they
	// wait in the kernel's backlog). 0 means 64.
	MaxHandshakes int
	// OnError, if set, receives the error of every failed handshake, which
	// names the peer's address ("aegis: TLS handshake with 10.0.0.5:41234
	// failed: ..."; trust failures match ErrUntrustedPeer). It is
	// called from the handshake's goroutine, perhaps concurrently, and must
	// not block. A remote peer can cause these at will: rate-limit logs.
	OnError func(err error)
}

const (
	defaultHandshakeTimeout = 10 * time.Second
	defaultMaxHandshakes    = 64
)

// Listener accepts connections from an inner listener, runs each one's
// server handshake on its own goroutine under a timeout, and returns from
// Accept only *tls.Conn whose handshake completed, so the code serving
// them only ever sees verified peers. A slow or stalled handshake never
// blocks Accept, and at most MaxHandshakes connections are held pending.
// Close closes the inner listener and every pending connection, and
// waits for every goroutine of the Listener.
//
// Connections must buffer writes, as TCP and the in-memory transport do:
// on net.Pipe, a refused handshake stalls until HandshakeTimeout, as both
// ends write (one its alert, the other the rest of its flight) and neither
// reads.
type Listener struct {
	inner   net.Listener
	creds   *Creds
	conf    *tls.Config
	timeout time.Duration
	onError func(error)

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	slots  chan struct{}  // one token per pending connection
	ready  chan accepted  // unbuffered: pending connections wait for Accept
	failed chan struct{}  // closed when the inner listener fails for good
	err    error          // the inner listener's final error; set before failed closes
	wg     sync.WaitGroup // the accept loop and the handshakes
}

// accepted is one result for Accept.
type accepted struct {
	conn *tls.Conn
	err  error
}

var _ net.Listener = (*Listener)(nil)

// Listener returns a Listener serving TLS with c's server configuration on
// connections accepted from l. It takes l over: closing the Listener
// closes l.
func (c *Creds) Listener(l net.Listener, opts ListenerOptions) *Listener {
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	if opts.MaxHandshakes <= 0 {
		opts.MaxHandshakes = defaultMaxHandshakes
	}
	ctx, cancel := context.WithCancel(context.Background())
	tl := &Listener{
		inner:   l,
		creds:   c,
		conf:    c.Server(),
		timeout: opts.HandshakeTimeout,
		onError: opts.OnError,
		ctx:     ctx,
		cancel:  cancel,
		slots:   make(chan struct{}, opts.MaxHandshakes),
		ready:   make(chan accepted),
		failed:  make(chan struct{}),
	}
	tl.wg.Add(1)
	go tl.acceptLoop()
	return tl
}

// Accept returns the next connection whose handshake completed, as a
// *tls.Conn. Errors of the inner listener are returned as they come (a
// net.Error with Timeout true is transient: retry after a pause); after
// Close it returns net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case a := <-l.ready:
		if a.err != nil {
			return nil, a.err
		}
		return a.conn, nil
	case <-l.failed:
		return nil, l.err
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting, closes the pending connections and waits for the
// Listener's goroutines. Connections already returned by Accept are the
// caller's. It is safe to call more than once.
func (l *Listener) Close() error {
	l.cancel()
	err := l.inner.Close()
	l.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// acceptLoop accepts from the inner listener while a slot is free and
// starts a handshake for each connection.
func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.ctx.Done():
			return
		}
		raw, err := l.inner.Accept()
		if err != nil {
			<-l.slots
			if l.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Transient: hand it to Accept, whose caller backs off.
				if !l.deliver(accepted{err: err}) {
					return
				}
				continue
			}
			l.err = err
			close(l.failed)
			return
		}
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

// handshake runs the server handshake on raw and hands the connection to
// Accept, holding its slot until then.
func (l *Listener) handshake(raw net.Conn) {
	defer l.wg.Done()
	defer func() { <-l.slots }()
	tc := tls.Server(raw, l.conf)
	ctx, cancel := context.WithTimeout(l.ctx, l.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		_ = raw.Close()
		if l.ctx.Err() != nil {
			return // closing: not the peer's failure
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("did not complete within %v: %w", l.timeout, err)
		}
		if l.onError != nil {
			l.onError(l.creds.handshakeError(raw.RemoteAddr(), err))
		}
		return
	}
	if !l.deliver(accepted{conn: tc}) {
		_ = raw.Close()
	}
}

// deliver hands a to Accept, or reports false once the Listener closes.
func (l *Listener) deliver(a accepted) bool {
	select {
	case l.ready <- a:
		return true
	case <-l.ctx.Done():
		return false
	}
}

// ExplainRefusal returns err unchanged unless it is the TLS alert of a peer
// refusing our certificate, which in TLS 1.3 a client sees at its first
// Read rather than in the handshake; then it returns an error naming addr
// and what to check, matching ErrUntrustedPeer and err.
func (c *Creds) ExplainRefusal(addr net.Addr, err error) error {
	if err == nil || !peerRefused(err) {
		return err
	}
	return c.handshakeError(addr, err)
}
