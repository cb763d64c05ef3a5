// This file tests the Server's limits one at a time, over TCP and the in-memory network.

package rpc

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/stretchr/testify/require"
)

// waitClosed reads conn until the server closes it and returns how long
// that took; it fails the test if the connection is still open after
// within.
func waitClosed(t *testing.T, conn net.Conn, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(within)) // fails on a pipe already closed by the peer
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server did not close the connection within %v", within)
	return time.Since(start)
}

func TestReadDeadlineJudge(t *testing.T) {
	const ms = int64(time.Millisecond)
	base := readDeadline{frame: 100 * ms, idle: 1000 * ms}
	cases := []struct {
		name       string
		d          readDeadline
		now        int64
		midFrame   bool
		frames     uint64
		busy       bool
		lastActive int64
		want       timeoutVerdict
		next       int64
	}{
		{"idle", base, 5000 * ms, false, 3, false, 4000 * ms, timeoutIdle, 0},
		{"idle not yet", base, 5000 * ms, false, 3, false, 4500 * ms, timeoutNotYet, 5500 * ms},
		{"busy", base, 5000 * ms, false, 3, true, 0, timeoutNotYet, 6000 * ms},
		{"frame late", readDeadline{frame: 100 * ms, idle: 1000 * ms, frameStart: 4900 * ms, frameNo: 3},
			5000 * ms, true, 3, true, 0, timeoutFrame, 0},
		{"frame in time", readDeadline{frame: 100 * ms, idle: 1000 * ms, frameStart: 4950 * ms, frameNo: 3},
			5000 * ms, true, 3, false, 0, timeoutNotYet, 5050 * ms},
		{"frame started after the deadline was armed", readDeadline{frame: 100 * ms, idle: 1000 * ms, frameStart: 1, frameNo: 2},
			5000 * ms, true, 3, false, 0, timeoutNotYet, 5100 * ms},
		{"frame after a pause", base, 5000 * ms, true, 3, false, 0, timeoutNotYet, 5100 * ms},
		{"no frame timeout", readDeadline{idle: 1000 * ms}, 5000 * ms, true, 3, false, 0, timeoutNotYet, 0},
		{"no idle timeout", readDeadline{frame: 100 * ms}, 5000 * ms, false, 3, false, 0, timeoutNotYet, 0},
	}
	for _, tc := range cases {
		v, next := tc.d.judge(tc.now, tc.midFrame, tc.frames, tc.busy, tc.lastActive)
		require.Equal(t, tc.want, v, tc.name)
		require.Equal(t, tc.next, next, tc.name)
	}
}

func TestOptionDefaults(t *testing.T) {
	lim := (&ServerOptions{}).limits()
	require.Equal(t, serverLimits{maxFrame: DefaultMaxFrameSize, frameTimeout: DefaultFrameTimeout,
		idleTimeout: DefaultIdleTimeout, maxConns: DefaultMaxConns, maxConnsPerIP: DefaultMaxConnsPerIP,
		maxInflight: DefaultMaxInflightPerConn}, lim)
	off := (&ServerOptions{FrameTimeout: -1, IdleTimeout: -1, MaxConns: -1, MaxConnsPerIP: -1, MaxInflightPerConn: -1}).limits()
	require.Zero(t, off.frameTimeout)
	require.Zero(t, off.idleTimeout)
	require.Zero(t, off.maxConns)
	require.Zero(t, off.maxConnsPerIP)
	require.Equal(t, int32(1<<31-1), off.maxInflight)
	require.Equal(t, DefaultClientIdleTimeout, NewClient(ClientOptions{}).idleTimeout)
}

func TestIdleTimeoutClosesIdleConnection(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		const idle = 200 * time.Millisecond
		srv := startServer(t, nk, "", echoHandler, ServerOptions{IdleTimeout: idle})
		conn := rawConn(t, nk, srv.addr)
		took := waitClosed(t, conn, promptly)
		require.GreaterOrEqual(t, took, idle/2) // from the server's accept, a little before
		require.Equal(t, uint64(1), srv.Stats().ClosedIdle)

		// Answering a request restarts the idle time.
		conn = rawConn(t, nk, srv.addr)
		require.NoError(t, conn.SetDeadline(time.Now().Add(promptly)))
		sent := time.Now() // the answer, and so the idle time, starts later
		_, err := conn.Write(appendRequestFrame(nil, &Request{Payload: []byte("x")}, 1, 0))
		require.NoError(t, err)
		fr := newFrameReader(conn, DefaultMaxFrameSize, KindResponse)
		_, _, _, err = fr.next()
		require.NoError(t, err)
		waitClosed(t, conn, promptly)
		require.GreaterOrEqual(t, time.Since(sent), idle)
		testutil.Eventually(t, promptly, func() bool { return srv.Stats().ClosedIdle == 2 }, "second idle close counted")
	})
}

// A connection whose handler runs longer than IdleTimeout is not idle.
func TestBusyConnectionIsNotIdledOut(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		const idle = 100 * time.Millisecond
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			if req.Method == "slow" {
				select {
				case <-time.After(4 * idle):
				case <-ctx.Done():
				}
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{IdleTimeout: idle})
		c := newTestClient(t, nk, ClientOptions{})
		resp, err := c.Call(context.Background(), srv.addr, &Request{Method: "slow", Payload: []byte("done")})
		require.NoError(t, err)
		require.Equal(t, "done", string(resp.Payload))
		require.Zero(t, srv.Stats().ClosedIdle)
		require.Equal(t, int32(1), srv.ln.accepted.Load())
	})
}

func TestFrameTimeoutClosesHalfSentFrame(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		const frameTimeout = 200 * time.Millisecond
		srv := startServer(t, nk, "", echoHandler, ServerOptions{FrameTimeout: frameTimeout, IdleTimeout: time.Hour})

		// A 4 MiB frame announced, a few bytes sent, then nothing.
		conn := rawConn(t, nk, srv.addr)
		head := append(binary.BigEndian.AppendUint32(nil, DefaultMaxFrameSize), Version, KindRequest, 0x99)
		sent := time.Now()
		_, err := conn.Write(head)
		require.NoError(t, err)
		waitClosed(t, conn, promptly)
		require.GreaterOrEqual(t, time.Since(sent), frameTimeout)

		// Dripping a byte at a time does not extend the frame's time.
		conn = rawConn(t, nk, srv.addr)
		_, err = conn.Write(head)
		require.NoError(t, err)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(frameTimeout / 10)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					if _, err := conn.Write([]byte{0}); err != nil {
						return
					}
				}
			}
		}()
		waitClosed(t, conn, 10*frameTimeout+promptly)
		close(stop)
		wg.Wait()
		s := srv.Stats()
		require.Equal(t, uint64(2), s.ClosedFrameTimeout)
		require.Zero(t, s.ClosedIdle)
	})
}

func TestMaxConns(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", echoHandler, ServerOptions{MaxConns: 2})
		c := newTestClient(t, nk, ClientOptions{})
		_, err := c.Call(context.Background(), srv.addr, &Request{})
		require.NoError(t, err)
		held := rawConn(t, nk, srv.addr)
		testutil.Eventually(t, promptly, func() bool { return srv.Stats().Conns == 2 }, "two connections served")

		over := rawConn(t, nk, srv.addr)
		waitClosed(t, over, promptly)
		require.Equal(t, uint64(1), srv.Stats().RefusedMaxConns)

		// Room again once one goes.
		require.NoError(t, held.Close())
		testutil.Eventually(t, promptly, func() bool { return srv.Stats().Conns == 1 }, "closed connection released")
		c2 := newTestClient(t, nk, ClientOptions{})
		resp, err := c2.Call(context.Background(), srv.addr, &Request{Payload: []byte("in")})
		require.NoError(t, err)
		require.Equal(t, "in", string(resp.Payload))
		require.Equal(t, uint64(1), srv.Stats().RefusedMaxConns)
	})
}

// connLoad returns the bytes of answers queued and the requests in flight
// on the Server's one connection.
func (s *Server) connLoad() (queued int, inflight int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns.all {
		sc.w.mu.Lock()
		queued = len(sc.w.buf)
		sc.w.mu.Unlock()
		inflight = sc.gate.n.Load()
	}
	return queued, inflight
}

// dialFrom dials addr over TCP from the loopback address local.
func dialFrom(t testing.TB, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: promptly}
	conn, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestMaxConnsPerIP(t *testing.T) {
	srv := startServer(t, netKinds[0], "", echoHandler, ServerOptions{MaxConnsPerIP: 3})
	for range 3 {
		dialFrom(t, "127.0.0.2", srv.addr)
	}
	testutil.Eventually(t, promptly, func() bool { return srv.Stats().Conns == 3 }, "three connections from 127.0.0.2")
	over := dialFrom(t, "127.0.0.2", srv.addr)
	waitClosed(t, over, promptly)
	require.Equal(t, uint64(1), srv.Stats().RefusedMaxConnsPerIP)

	// Other addresses are not affected.
	c := newTestClient(t, netKinds[0], ClientOptions{})
	resp, err := c.Call(context.Background(), srv.addr, &Request{Payload: []byte("ok")})
	require.NoError(t, err)
	require.Equal(t, "ok", string(resp.Payload))
	s := srv.Stats()
	require.Equal(t, 4, s.Conns)
	require.Equal(t, uint64(1), s.RefusedMaxConnsPerIP)
	require.Zero(t, s.RefusedMaxConns)
}

// At MaxInflightPerConn requests in flight the connection stops reading:
// requests beyond wait (their handlers do not start) until one finishes;
// nothing is rejected.
func TestInflightCapAppliesBackpressure(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		const limit, total = 4, 10
		var started atomic.Int32
		release := make(chan struct{}, total)
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			started.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{MaxInflightPerConn: limit})
		conn := rawConn(t, nk, srv.addr)
		var batch []byte
		for id := uint64(1); id <= total; id++ {
			batch = appendRequestFrame(batch, &Request{Payload: []byte{byte(id)}}, id, 0)
		}
		written := make(chan error, 1)
		go func() { _, err := conn.Write(batch); written <- err }()

		testutil.Eventually(t, promptly, func() bool {
			return started.Load() == limit && srv.Stats().InflightPauses > 0
		}, "%d handlers started and the reader paused", limit)
		require.Equal(t, int32(limit), started.Load(), "no handler beyond the cap")

		release <- struct{}{}
		testutil.Eventually(t, promptly, func() bool { return started.Load() == limit+1 }, "one more started after one finished")
		require.Equal(t, int32(limit+1), started.Load())

		for range total - 1 {
			release <- struct{}{}
		}
		fr := newFrameReader(conn, DefaultMaxFrameSize, KindResponse)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(promptly)))
		seen := map[uint64]bool{}
		for len(seen) < total {
			body, _, _, err := fr.next()
			require.NoError(t, err)
			var resp Response
			require.NoError(t, decodeResponse(body, &resp))
			require.Nil(t, resp.Err)
			seen[resp.CallID] = true
		}
		require.NoError(t, <-written)
	})
}

// Many callers on one connection with a small in-flight cap all get their
// answers (no deadlock between the paused reader and the handlers).
func TestInflightCapUnderConcurrentCalls(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			if req.Method == "slow" {
				time.Sleep(time.Millisecond)
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{MaxInflightPerConn: 2})
		c := newTestClient(t, nk, ClientOptions{})
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for g := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 30 {
					m := "fast"
					if (g+i)%3 == 0 {
						m = "slow"
					}
					resp, err := c.Call(context.Background(), srv.addr, &Request{Method: m, Payload: []byte{byte(g)}})
					if err == nil && (len(resp.Payload) != 1 || resp.Payload[0] != byte(g)) {
						err = errors.New("wrong answer")
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, int32(1), srv.ln.accepted.Load())
	})
}

// A peer that sends requests and never reads the answers makes handlers
// wait once maxQueuedWrite bytes of answers are queued behind the blocked
// write, and then the connection stops reading: the server's memory for it
// stays bounded.
func TestUnreadAnswersStallTheConnection(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		answer := make([]byte, 256<<10)
		srv := startServer(t, nk, "", func(context.Context, *Request) Response {
			time.Sleep(2 * time.Millisecond) // slow enough to run side by side
			return Response{Payload: answer}
		}, ServerOptions{MaxInflightPerConn: 8})
		conn := rawConn(t, nk, srv.addr)
		go func() {
			for id := uint64(1); ; id++ {
				if _, err := conn.Write(appendRequestFrame(nil, &Request{}, id, 0)); err != nil {
					return
				}
			}
		}()
		// Normally within milliseconds; the bound is generous for a
		// loaded machine (it once took over 5 s in a CI run beside a soak).
		testutil.Eventually(t, 20*time.Second, func() bool { return srv.Stats().WriteStalls > 0 }, "answers stalled")
		// However many requests the peer sends meanwhile, what the
		// connection holds stays bounded.
		for range 20 {
			queued, inflight := srv.connLoad()
			require.LessOrEqual(t, queued, maxQueuedWrite+len(answer)+64)
			require.LessOrEqual(t, inflight, int32(8))
			time.Sleep(time.Millisecond) // sampling, not waiting for an event
		}
		require.NoError(t, conn.Close())
	})
}

// A server closing idle connections costs callers nothing: the Client
// either drops the connection first (its IdleTimeout is shorter) or finds
// it closed before sending, and dials again.
func TestClientAndServerIdleTimeouts(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", echoHandler, ServerOptions{IdleTimeout: 100 * time.Millisecond})
		c := newTestClient(t, nk, ClientOptions{IdleTimeout: -1})
		_, err := c.Call(context.Background(), srv.addr, &Request{})
		require.NoError(t, err)
		// Closed, not just counted: the close (and so the FIN the client's
		// probe looks for) happens a moment after the count.
		testutil.Eventually(t, promptly, func() bool { st := srv.Stats(); return st.ClosedIdle == 1 && st.Conns == 0 }, "server closed the idle connection")
		resp, err := c.Call(context.Background(), srv.addr, &Request{Payload: []byte("again")})
		require.NoError(t, err, "the closed connection is found closed and replaced")
		require.Equal(t, "again", string(resp.Payload))
		require.Equal(t, int32(2), srv.ln.accepted.Load())

		// With a shorter client IdleTimeout, calls at any spacing never
		// meet a connection the server is closing.
		srv2 := startServer(t, nk, "", echoHandler, ServerOptions{IdleTimeout: 60 * time.Millisecond})
		c2 := newTestClient(t, nk, ClientOptions{IdleTimeout: 30 * time.Millisecond})
		for i := range 40 {
			_, err := c2.Call(context.Background(), srv2.addr, &Request{})
			require.NoError(t, err)
			time.Sleep(time.Duration(i%8) * 10 * time.Millisecond) // the spacing under test, not a wait for an event
		}
		require.Greater(t, srv2.ln.accepted.Load(), int32(1), "idle connections were replaced")
	})
}
