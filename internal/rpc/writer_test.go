// This file tests the batching frame writer: batches in one write, refusal after a failure.

package rpc

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// recordConn records writes; the first one blocks until gate is closed.
type recordConn struct {
	net.Conn // nil: only Write is used
	mu       sync.Mutex
	writes   [][]byte
	entered  chan struct{}
	gate     chan struct{}
	err      error
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(p))
	first := len(c.writes) == 1
	c.mu.Unlock()
	if first && c.gate != nil {
		c.entered <- struct{}{}
		<-c.gate
	}
	if c.err != nil {
		return 0, c.err
	}
	return len(p), nil
}

func TestWriterBatchesWhileWriting(t *testing.T) {
	rc := &recordConn{entered: make(chan struct{}), gate: make(chan struct{})}
	w := &frameWriter{conn: rc}
	send := func(s string) error {
		if err := w.lock(); err != nil {
			return err
		}
		w.buf = append(w.buf, s...)
		return w.commit(false)
	}
	done := make(chan error)
	go func() { done <- send("a") }()
	<-rc.entered // "a" is being written
	require.NoError(t, send("b"))
	require.NoError(t, send("c"))
	close(rc.gate)
	require.NoError(t, <-done)
	require.Equal(t, [][]byte{[]byte("a"), []byte("bc")}, rc.writes, "b and c went out in one write")

	// Idle again: the next frame is written at once by its sender.
	require.NoError(t, send("d"))
	require.Len(t, rc.writes, 3)
}

func TestWriterFailureIsSticky(t *testing.T) {
	boom := errors.New("boom")
	rc := &recordConn{err: boom}
	var failures int
	w := &frameWriter{conn: rc, onError: func(err error) {
		require.ErrorIs(t, err, boom)
		failures++
	}}
	require.NoError(t, w.lock())
	w.buf = append(w.buf, 'x')
	require.ErrorIs(t, w.commit(true), boom)
	require.Equal(t, 1, failures)
	require.ErrorIs(t, w.lock(), boom)

	w2 := &frameWriter{conn: &recordConn{}}
	w2.shutdown(net.ErrClosed)
	require.ErrorIs(t, w2.lock(), net.ErrClosed)
}
