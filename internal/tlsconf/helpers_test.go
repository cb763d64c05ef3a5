// This file holds the test helpers: a keyring, an in-memory listener and a
// connect helper that runs one call connection between two Creds.

package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testRing is a keyring the tests change at will.
type testRing struct {
	mu      sync.Mutex // guards primary and all
	primary []byte
	all     [][]byte
}

func newRing(primary []byte, all ...[]byte) *testRing {
	r := &testRing{}
	r.set(primary, all...)
	return r
}

func (r *testRing) set(primary []byte, all ...[]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.primary, r.all = primary, all
}

func (r *testRing) install(k []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(append([][]byte(nil), r.all...), k)
}

func (r *testRing) use(k []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.primary = k
}

func (r *testRing) remove(k []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all [][]byte
	for _, x := range r.all {
		if !bytes.Equal(x, k) {
			all = append(all, x)
		}
	}
	r.all = all
}

func (r *testRing) keys() ([]byte, [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.primary, r.all
}

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func derived(t testing.TB, node string, r *testRing) *Creds {
	t.Helper()
	c, err := NewDerived(node, r.keys)
	require.NoError(t, err)
	return c
}

// pipeListener is a net.Listener whose connections are net.Pipe ends.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (p *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *pipeListener) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

func (p *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (p *pipeListener) dial() (net.Conn, error) {
	s, c := net.Pipe()
	select {
	case p.conns <- s:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// listen returns a listener on network ("pipe" or "tcp") and a dial func.
func listen(t testing.TB, network string) (net.Listener, func() (net.Conn, error)) {
	t.Helper()
	if network == "pipe" {
		pl := newPipeListener()
		return pl, pl.dial
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln, func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }
}

// outcome is what both ends of one call connection saw.
type outcome struct {
	srvErr  error  // the server's handshake error, via OnError
	srvPeer string // PeerNode on the server, once accepted
	cliErr  error  // DialTLS's error, or the first Read's (explained)
	cliPeer string // PeerNode on the client
	version uint16 // negotiated on the client
}

// testWait bounds every wait of a test; generous, as other test runs may
// share the machine's CPUs.
const testWait = 10 * time.Second

// connect runs one connection from cli to srv over network, the client
// expecting the server to be peerNode; the server writes a greeting that
// the client reads, so that a refusal by either end shows at the other.
func connect(t testing.TB, srv, cli *Creds, peerNode, network string) outcome {
	t.Helper()
	inner, dial := listen(t, network)
	errs := make(chan error, 1)
	l := srv.Listener(inner, ListenerOptions{HandshakeTimeout: testWait, OnError: func(err error) {
		select {
		case errs <- err:
		default:
		}
	}})
	accepted := make(chan string, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		peer, err := srv.PeerNode(conn.(*tls.Conn).ConnectionState())
		assert.NoError(t, err)
		_ = conn.SetDeadline(time.Now().Add(testWait))
		_, _ = conn.Write([]byte("hello"))
		closeRaw(conn.(*tls.Conn))
		accepted <- peer
	}()
	defer func() {
		require.NoError(t, l.Close())
		<-served
	}()

	var o outcome
	o.cliPeer, o.version, o.cliErr = dialAndRead(t, cli, dial, peerNode)
	select {
	case o.srvPeer = <-accepted:
	case o.srvErr = <-errs:
	case <-time.After(testWait):
		t.Fatal("the server neither accepted nor refused the connection")
	}
	return o
}

// dialAndRead dials, runs DialTLS and reads the server's greeting.
func dialAndRead(t testing.TB, cli *Creds, dial func() (net.Conn, error), peerNode string) (string, uint16, error) {
	t.Helper()
	raw, err := dial()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	tc, err := cli.DialTLS(ctx, raw, peerNode)
	if err != nil {
		return "", 0, err
	}
	defer closeRaw(tc)
	_ = tc.SetDeadline(time.Now().Add(testWait))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(tc, buf); err != nil {
		return "", 0, cli.ExplainRefusal(tc.RemoteAddr(), err)
	}
	require.Equal(t, "hello", string(buf))
	cs := tc.ConnectionState()
	peer, err := cli.PeerNode(cs)
	require.NoError(t, err)
	return peer, cs.Version, nil
}

// closeRaw closes c's underlying connection without a close_notify alert,
// whose write on net.Pipe would wait for a reader that never comes.
func closeRaw(c *tls.Conn) { _ = c.NetConn().Close() }

// requireOK checks that o is a successful connection from cli to srv.
func requireOK(t testing.TB, o outcome, cli, srv string) {
	t.Helper()
	require.NoError(t, o.cliErr)
	require.NoError(t, o.srvErr)
	require.Equal(t, srv, o.cliPeer)
	require.Equal(t, cli, o.srvPeer)
	require.Equal(t, uint16(tls.VersionTLS13), o.version)
}
