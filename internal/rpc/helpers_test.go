// This file holds the test harness: goleak, an in-memory network, and server and client helpers.

package rpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ---- in-memory network ----

// pipeNet is an in-memory network: listeners are named, and Dial hands the
// listener one end of a net.Pipe.
type pipeNet struct {
	mu   sync.Mutex
	next int
	lns  map[string]*pipeListener
}

var pipes = &pipeNet{lns: make(map[string]*pipeListener)}

var errPipeRefused = errors.New("pipe: connection refused")

// Listen listens on addr, or on a fresh address if addr is "".
func (n *pipeNet) Listen(addr string) (net.Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if addr == "" {
		n.next++
		addr = fmt.Sprintf("pipe-%d", n.next)
	}
	if n.lns[addr] != nil {
		return nil, fmt.Errorf("pipe: %s: address in use", addr)
	}
	ln := &pipeListener{net: n, addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
	n.lns[addr] = ln
	return ln, nil
}

// Dial connects to the listener at addr.
func (n *pipeNet) Dial(ctx context.Context, addr string) (net.Conn, error) {
	n.mu.Lock()
	ln := n.lns[addr]
	n.mu.Unlock()
	if ln == nil {
		return nil, errPipeRefused
	}
	local, remote := newPipePair()
	select {
	case ln.ch <- remote:
		return local, nil
	case <-ln.done:
		err := errPipeRefused
		_ = local.Close()
		_ = remote.Close()
		return nil, err
	case <-ctx.Done():
		_ = local.Close()
		_ = remote.Close()
		return nil, ctx.Err()
	}
}

// pipeConn is one end of a net.Pipe that, like the in-memory transport's
// streams, can tell without blocking whether the other end was closed.
type pipeConn struct {
	net.Conn
	closed, peer *atomic.Bool
}

func newPipePair() (net.Conn, net.Conn) {
	a, b := net.Pipe()
	ca, cb := new(atomic.Bool), new(atomic.Bool)
	return &pipeConn{a, ca, cb}, &pipeConn{b, cb, ca}
}

func (c *pipeConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

func (c *pipeConn) PeerClosed() bool { return c.peer.Load() }

type pipeListener struct {
	net  *pipeNet
	addr string
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.net.mu.Lock()
		if l.net.lns[l.addr] == l {
			delete(l.net.lns, l.addr)
		}
		l.net.mu.Unlock()
	})
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr(l.addr) }

type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return string(a) }

// ---- transports under test ----

// netKind is a network the core tests run over.
type netKind struct {
	name   string
	listen func(addr string) (net.Listener, error) // addr "" = any
	dial   func(ctx context.Context, addr string) (net.Conn, error)
}

var netKinds = []netKind{
	{
		name: "tcp",
		listen: func(addr string) (net.Listener, error) {
			if addr == "" {
				addr = "127.0.0.1:0"
			}
			return net.Listen("tcp", addr)
		},
		dial: nil, // the Client's default TCP dialer
	},
	{name: "pipe", listen: pipes.Listen, dial: pipes.Dial},
}

// forEachNet runs f as a subtest over every netKind.
func forEachNet(t *testing.T, f func(t *testing.T, nk netKind)) {
	for _, nk := range netKinds {
		t.Run(nk.name, func(t *testing.T) { f(t, nk) })
	}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	accepted atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// testServer is a Server serving on a listener of some netKind.
type testServer struct {
	*Server
	ln     *countingListener
	addr   string
	served chan error
}

// startServer starts a Server with handler h on a fresh address (or addr if
// not ""); it is closed when the test ends.
func startServer(t testing.TB, nk netKind, addr string, h Handler, opts ServerOptions) *testServer {
	t.Helper()
	ln, err := nk.listen(addr)
	require.NoError(t, err)
	ts := &testServer{
		Server: NewServer(h, opts),
		ln:     &countingListener{Listener: ln},
		addr:   ln.Addr().String(),
		served: make(chan error, 1),
	}
	go func() { ts.served <- ts.Serve(ts.ln) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop closes the server and checks that Serve returned nil. It may be
// called more than once.
func (ts *testServer) stop(t testing.TB) {
	require.NoError(t, ts.Close())
	if ts.served != nil {
		require.NoError(t, <-ts.served)
		ts.served = nil
	}
}

// newTestClient returns a Client dialing over nk; it is closed when the test
// ends.
func newTestClient(t testing.TB, nk netKind, opts ClientOptions) *Client {
	t.Helper()
	if opts.Dial == nil {
		opts.Dial = nk.dial
	}
	c := NewClient(opts)
	t.Cleanup(func() { require.NoError(t, c.Close()) })
	return c
}

// liveConns reports how many connections the client holds.
func (c *Client) liveConns() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.conns)
}

// idleFor returns how long the connection to addr has gone unread with no
// call waiting (0 if it is read, waited on, or absent).
func (c *Client) idleFor(addr string) time.Duration {
	c.mu.RLock()
	cc := c.conns[addr]
	c.mu.RUnlock()
	if cc == nil {
		return 0
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.reading || len(cc.pending) > 0 || cc.idleSince.IsZero() {
		return 0
	}
	return time.Since(cc.idleSince)
}

// echoHandler answers with the request payload.
func echoHandler(_ context.Context, req *Request) Response {
	return Response{Payload: req.Payload}
}
