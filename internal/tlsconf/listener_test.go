// This file tests the Listener's handling of peers that fail, stall or
// flood the handshake, of its inner listener's errors, and DialTLS's ctx.

package tlsconf

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// serveDerived starts a Listener of a derived node "srv" over TCP and
// serves it with greeter; failed handshakes go to the returned channel.
func serveDerived(t *testing.T, opts ListenerOptions, wrap func(net.Listener) net.Listener) (*Creds, *Listener, func() (net.Conn, error), <-chan error) {
	t.Helper()
	srv := derived(t, "srv", newRing(key(1)))
	inner, dial := listen(t, "tcp")
	if wrap != nil {
		inner = wrap(inner)
	}
	errs := make(chan error, 16)
	hook := opts.OnError
	opts.OnError = func(err error) {
		if hook != nil {
			hook(err)
		}
		errs <- err
	}
	l := srv.Listener(inner, opts)
	wait := greeter(l)
	t.Cleanup(func() {
		require.NoError(t, l.Close())
		wait()
	})
	return srv, l, dial, errs
}

func TestListenerRefusesGarbageQuickly(t *testing.T) {
	srv, _, dial, errs := serveDerived(t, ListenerOptions{HandshakeTimeout: testWait}, nil)
	conn, err := dial()
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	require.NoError(t, err)
	require.ErrorContains(t, <-errs, "does not look like a TLS handshake")
	_ = conn.SetReadDeadline(time.Now().Add(testWait))
	_, err = io.Copy(io.Discard, conn) // the server closed it: EOF or a reset
	require.False(t, isTimeout(err), "the server left the connection open")

	cli := derived(t, "cli", newRing(key(1)))
	_, _, err = dialAndRead(t, cli, dial, srv.Node())
	require.NoError(t, err, "the listener still serves")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestListenerDropsStalledHandshake(t *testing.T) {
	srv, _, dial, errs := serveDerived(t, ListenerOptions{HandshakeTimeout: 100 * time.Millisecond}, nil)
	silent, err := dial()
	require.NoError(t, err)
	defer silent.Close()

	// A stalled handshake does not hold up others.
	cli := derived(t, "cli", newRing(key(1)))
	_, _, err = dialAndRead(t, cli, dial, srv.Node())
	require.NoError(t, err)

	err = <-errs
	require.ErrorContains(t, err, "did not complete within 100ms")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	_ = silent.SetReadDeadline(time.Now().Add(testWait))
	_, err = io.Copy(io.Discard, silent)
	require.False(t, isTimeout(err), "the server left the connection open")
}

// eventLog records what happened, in order, from many goroutines.
type eventLog struct {
	mu     sync.Mutex // guards events
	events []string
	added  chan struct{}
}

func (e *eventLog) add(s string) {
	e.mu.Lock()
	e.events = append(e.events, s)
	e.mu.Unlock()
	select {
	case e.added <- struct{}{}:
	default:
	}
}

func (e *eventLog) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.events...)
}

// notifyingListener logs every connection its inner listener accepts.
type notifyingListener struct {
	net.Listener
	log *eventLog
}

func (n notifyingListener) Accept() (net.Conn, error) {
	c, err := n.Listener.Accept()
	if err == nil {
		n.log.add("accepted")
	}
	return c, err
}

func TestMaxHandshakesBoundsPendingConnections(t *testing.T) {
	log := &eventLog{added: make(chan struct{}, 1)}
	wrap := func(l net.Listener) net.Listener { return notifyingListener{l, log} }
	opts := ListenerOptions{HandshakeTimeout: 200 * time.Millisecond, MaxHandshakes: 1, OnError: func(err error) { log.add("timed out: " + err.Error()) }}
	srv, _, dial, _ := serveDerived(t, opts, wrap)
	silent, err := dial()
	require.NoError(t, err)
	defer silent.Close()
	<-log.added

	// The only slot is held by the silent connection until it times out;
	// only then is the next connection accepted.
	cli := derived(t, "cli", newRing(key(1)))
	_, _, err = dialAndRead(t, cli, dial, srv.Node())
	require.NoError(t, err)
	events := log.list()
	require.Len(t, events, 3)
	require.Equal(t, "accepted", events[0])
	require.Contains(t, events[1], "did not complete within 200ms")
	require.Equal(t, "accepted", events[2])
}

func TestListenerCloseAbortsPendingHandshakes(t *testing.T) {
	srv := derived(t, "srv", newRing(key(1)))
	inner, dial := listen(t, "tcp")
	l := srv.Listener(inner, ListenerOptions{HandshakeTimeout: time.Hour, OnError: func(err error) { t.Error(err) }})
	var silent []net.Conn
	for range 3 {
		c, err := dial()
		require.NoError(t, err)
		defer c.Close()
		silent = append(silent, c)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	require.NoError(t, l.Close()) // waits for the handshakes, which would take an hour
	require.ErrorIs(t, <-accepted, net.ErrClosed)
	_, err := l.Accept()
	require.ErrorIs(t, err, net.ErrClosed)
	require.NoError(t, l.Close())
	for _, c := range silent {
		_ = c.SetReadDeadline(time.Now().Add(testWait))
		_, err := io.Copy(io.Discard, c)
		require.False(t, isTimeout(err))
	}
}

// scriptedListener returns the errors it is given, then blocks until
// closed.
type scriptedListener struct {
	errs   chan error
	closed chan struct{}
	once   sync.Once
}

func (s *scriptedListener) Accept() (net.Conn, error) {
	select {
	case err := <-s.errs:
		return nil, err
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

func (s *scriptedListener) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

func (s *scriptedListener) Addr() net.Addr { return pipeAddr{} }

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "accept: too many open files" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestListenerPassesInnerErrors(t *testing.T) {
	srv := derived(t, "srv", newRing(key(1)))
	inner := &scriptedListener{errs: make(chan error, 2), closed: make(chan struct{})}
	l := srv.Listener(inner, ListenerOptions{})
	defer l.Close()

	inner.errs <- timeoutErr{}
	_, err := l.Accept()
	require.ErrorIs(t, err, timeoutErr{}, "a transient error is handed on, and the listener goes on")

	broken := errors.New("listener broke")
	inner.errs <- broken
	_, err = l.Accept()
	require.ErrorIs(t, err, broken)
	_, err = l.Accept()
	require.ErrorIs(t, err, broken, "a lasting error is returned again")
}

func TestDialTLSHonorsContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	held := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept() // and never answer
		if err == nil {
			held <- c
		}
		close(held)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	cli := derived(t, "cli", newRing(key(1)))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = cli.DialTLS(ctx, raw, "srv")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "aegis: TLS handshake with "+ln.Addr().String()+" failed")
	_, err = raw.Write([]byte("x"))
	require.ErrorIs(t, err, net.ErrClosed, "DialTLS closes the connection it failed on")
	for c := range held {
		_ = c.Close()
	}
}
