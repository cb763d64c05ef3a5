// This file tests Client and Server end to end over loopback TCP and the in-memory network.

package rpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/stretchr/testify/require"
)

// promptly bounds how long an operation that should be quick may take; it is
// generous so the race detector on a loaded machine does not cause flakes.
const promptly = 5 * time.Second

func TestRoundTrip(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		got := make(chan *Request, 1)
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			_, hasDeadline := ctx.Deadline()
			if (req.Timeout != 0) != hasDeadline {
				return Response{Err: &ErrorInfo{Code: "bad-ctx"}}
			}
			got <- req
			return Response{Payload: append([]byte("pong:"), req.Payload...)}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})

		req := &Request{
			CallID:     999, // ignored
			Service:    "inventory",
			Method:     "Get",
			InstanceID: "inst-1",
			MessageID:  "msg-1",
			Timeout:    2 * time.Second,
			Header:     map[string]string{"trace": "abc", "empty": ""},
			Payload:    []byte("ping"),
			Attempt:    3,
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		resp, err := c.Call(ctx, srv.addr, req)
		require.NoError(t, err)
		require.Nil(t, resp.Err)
		require.Equal(t, "pong:ping", string(resp.Payload))
		r := <-got
		require.NotZero(t, r.CallID)
		require.Equal(t, resp.CallID, r.CallID)
		require.Equal(t, "inventory", r.Service)
		require.Equal(t, "Get", r.Method)
		require.Equal(t, "inst-1", r.InstanceID)
		require.Equal(t, "msg-1", r.MessageID)
		require.Equal(t, req.Header, r.Header)
		require.Equal(t, "ping", string(r.Payload))
		require.Equal(t, uint32(3), r.Attempt)
		require.Greater(t, r.Timeout, time.Duration(0))
		require.LessOrEqual(t, r.Timeout, 2*time.Second, "req.Timeout is shorter than ctx's deadline")
		require.Equal(t, uint64(999), req.CallID, "Call must not modify req")

		// No deadline and no Timeout: the handler gets no deadline either.
		resp, err = c.Call(context.Background(), srv.addr, &Request{Service: "s", Method: "m"})
		require.NoError(t, err)
		require.Nil(t, resp.Err)
		r = <-got
		require.Zero(t, r.Timeout)
		require.Nil(t, r.Payload)
		require.Nil(t, r.Header)

		// ctx deadline shorter than req.Timeout: the remaining time is sent.
		ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel2()
		_, err = c.Call(ctx2, srv.addr, &Request{Timeout: time.Hour})
		require.NoError(t, err)
		r = <-got
		require.Greater(t, r.Timeout, time.Duration(0))
		require.LessOrEqual(t, r.Timeout, 30*time.Second)

		require.Equal(t, int32(1), srv.ln.accepted.Load(), "one connection reused")
	})
}

func TestConcurrentCallersShareOneConnection(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", func(_ context.Context, req *Request) Response {
			// Answer with the payload reversed, tagged with the header.
			p := make([]byte, 0, len(req.Payload)+8)
			p = append(p, req.Header["caller"]...)
			p = append(p, '/')
			for i := len(req.Payload) - 1; i >= 0; i-- {
				p = append(p, req.Payload[i])
			}
			return Response{Payload: p}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})

		const callers, calls = 64, 200
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for g := 0; g < callers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				caller := fmt.Sprint(g)
				req := &Request{Service: "s", Method: "m", Header: map[string]string{"caller": caller}}
				for i := 0; i < calls; i++ {
					payload := fmt.Sprintf("%d:%d:%s", g, i, strings.Repeat("x", (g*7+i)%97))
					req.Payload = []byte(payload)
					resp, err := c.Call(context.Background(), srv.addr, req)
					if err != nil {
						errs <- err
						return
					}
					want := []byte(caller + "/")
					for j := len(payload) - 1; j >= 0; j-- {
						want = append(want, payload[j])
					}
					if !bytes.Equal(want, resp.Payload) {
						errs <- fmt.Errorf("caller %d call %d: got %q want %q", g, i, resp.Payload, want)
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

func TestPayloadsAndHeaders(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		got := make(chan *Request, 1)
		srv := startServer(t, nk, "", func(_ context.Context, req *Request) Response {
			got <- req
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})

		big := make([]byte, 1<<20)
		for i := range big {
			big[i] = byte(i * 31)
		}
		manyHeaders := make(map[string]string)
		for i := 0; i < 300; i++ {
			manyHeaders[fmt.Sprintf("key-%d", i)] = strings.Repeat("v", i)
		}
		cases := []struct {
			name string
			req  Request
		}{
			{"empty", Request{}},
			{"empty-non-nil-payload", Request{Payload: []byte{}, Header: map[string]string{}}},
			{"headers", Request{Service: "s", Header: map[string]string{"a": "1", "": "empty-key", "c": ""}}},
			{"many-headers", Request{Header: manyHeaders}},
			{"long-strings", Request{Service: strings.Repeat("s", 40), Method: strings.Repeat("m", 300),
				InstanceID: strings.Repeat("i", 70000), MessageID: "é✓"}},
			{"1MiB", Request{Service: "s", Method: "big", Payload: big}},
			{"attempt-max", Request{Attempt: 1<<32 - 1, Payload: []byte{0}}},
		}
		for _, tc := range cases {
			resp, err := c.Call(context.Background(), srv.addr, &tc.req)
			require.NoError(t, err, tc.name)
			require.Nil(t, resp.Err, tc.name)
			r := <-got
			require.True(t, bytes.Equal(tc.req.Payload, resp.Payload), tc.name)
			require.True(t, bytes.Equal(tc.req.Payload, r.Payload), tc.name)
			if len(tc.req.Header) == 0 {
				require.Nil(t, r.Header, tc.name)
			} else {
				require.Equal(t, tc.req.Header, r.Header, tc.name)
			}
			require.Equal(t, tc.req.Service, r.Service, tc.name)
			require.Equal(t, tc.req.Method, r.Method, tc.name)
			require.Equal(t, tc.req.InstanceID, r.InstanceID, tc.name)
			require.Equal(t, tc.req.MessageID, r.MessageID, tc.name)
			require.Equal(t, tc.req.Attempt, r.Attempt, tc.name)
		}
	})
}

func TestRequestOverClientLimit(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		var handled atomic.Int32
		srv := startServer(t, nk, "", func(_ context.Context, req *Request) Response {
			handled.Add(1)
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{MaxFrameSize: 1024})

		_, err := c.Call(context.Background(), srv.addr, &Request{Payload: make([]byte, 2000)})
		require.ErrorIs(t, err, ErrFrameTooLarge)
		// Checked before dialing: no connection is needed to refuse it.
		_, err = c.Call(context.Background(), "nowhere:1", &Request{Payload: make([]byte, 2000)})
		require.ErrorIs(t, err, ErrFrameTooLarge)

		resp, err := c.Call(context.Background(), srv.addr, &Request{Payload: []byte("small")})
		require.NoError(t, err)
		require.Equal(t, "small", string(resp.Payload))
		require.Equal(t, int32(1), handled.Load(), "the oversized request was not sent")
		require.Equal(t, int32(1), srv.ln.accepted.Load())

		// The limit is exact: a frame of exactly MaxFrameSize goes through.
		req := &Request{}
		for n := 900; ; n++ {
			req.Payload = make([]byte, n)
			if requestFrameLen(req, 3, 0) == 1024 {
				break
			}
		}
		_, err = c.Call(context.Background(), srv.addr, req)
		require.NoError(t, err)
		req.Payload = append(req.Payload, 0)
		_, err = c.Call(context.Background(), srv.addr, req)
		require.ErrorIs(t, err, ErrFrameTooLarge)
	})
}

func TestRequestOverServerLimit(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		var handled atomic.Int32
		srv := startServer(t, nk, "", func(_ context.Context, req *Request) Response {
			handled.Add(1)
			return Response{Payload: req.Payload}
		}, ServerOptions{MaxFrameSize: 1024})
		c := newTestClient(t, nk, ClientOptions{})

		for _, size := range []int{2000, 3 << 20} {
			resp, err := c.Call(context.Background(), srv.addr, &Request{Service: "s", Payload: make([]byte, size)})
			require.NoError(t, err)
			require.NotNil(t, resp.Err, "size %d", size)
			require.Equal(t, CodeFrameTooLarge, resp.Err.Code)
			require.False(t, resp.Err.Retryable)
			require.Zero(t, handled.Load())

			resp, err = c.Call(context.Background(), srv.addr, &Request{Payload: []byte("next")})
			require.NoError(t, err)
			require.Nil(t, resp.Err)
			require.Equal(t, "next", string(resp.Payload))
			handled.Store(0)
		}
		require.Equal(t, int32(1), srv.ln.accepted.Load(), "the connection stayed usable")
	})
}

func TestResponseOverClientLimit(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", func(_ context.Context, req *Request) Response {
			if req.Method == "big" {
				return Response{Payload: make([]byte, 4096)}
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{MaxFrameSize: 1024})

		_, err := c.Call(context.Background(), srv.addr, &Request{Method: "big"})
		require.ErrorIs(t, err, ErrFrameTooLarge)
		resp, err := c.Call(context.Background(), srv.addr, &Request{Payload: []byte("ok")})
		require.NoError(t, err)
		require.Equal(t, "ok", string(resp.Payload))
		require.Equal(t, int32(1), srv.ln.accepted.Load())
	})
}

func TestResponseOverServerLimit(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", func(_ context.Context, req *Request) Response {
			if req.Method == "big" {
				return Response{Payload: make([]byte, 4096)}
			}
			if req.Method == "big-error" {
				return Response{Err: &ErrorInfo{Code: "x", Message: strings.Repeat("m", 4096)}}
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{MaxFrameSize: 1024})
		c := newTestClient(t, nk, ClientOptions{})

		for _, m := range []string{"big", "big-error"} {
			resp, err := c.Call(context.Background(), srv.addr, &Request{Method: m})
			require.NoError(t, err)
			require.NotNil(t, resp.Err)
			require.Equal(t, CodeResponseTooLarge, resp.Err.Code)
			require.False(t, resp.Err.Retryable)
		}
		resp, err := c.Call(context.Background(), srv.addr, &Request{Payload: []byte("ok")})
		require.NoError(t, err)
		require.Equal(t, "ok", string(resp.Payload))
	})
}

func TestHandlerPanicAndErrors(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", func(_ context.Context, req *Request) Response {
			switch req.Method {
			case "panic":
				panic("boom")
			case "zero":
				return Response{}
			case "fail":
				return Response{Payload: []byte("detail"), Err: &ErrorInfo{Code: "busy", Message: "try later", Retryable: true}}
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})

		resp, err := c.Call(context.Background(), srv.addr, &Request{Method: "panic"})
		require.NoError(t, err)
		require.Equal(t, &ErrorInfo{Code: CodePanic, Message: "boom"}, resp.Err)

		resp, err = c.Call(context.Background(), srv.addr, &Request{Method: "zero"})
		require.NoError(t, err)
		require.Nil(t, resp.Err)
		require.Nil(t, resp.Payload)

		resp, err = c.Call(context.Background(), srv.addr, &Request{Method: "fail"})
		require.NoError(t, err)
		require.Equal(t, &ErrorInfo{Code: "busy", Message: "try later", Retryable: true}, resp.Err)
		require.Equal(t, "detail", string(resp.Payload))
		require.Equal(t, "rpc: remote error busy: try later", resp.Err.Error())

		resp, err = c.Call(context.Background(), srv.addr, &Request{Payload: []byte("still serving")})
		require.NoError(t, err)
		require.Equal(t, "still serving", string(resp.Payload))
		require.Equal(t, int32(1), srv.ln.accepted.Load())
	})
}

func TestDeadlinePropagates(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		type seen struct {
			timeout time.Duration
			err     error
		}
		handlerDone := make(chan seen, 1)
		callerDone := make(chan struct{})
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			<-ctx.Done()
			handlerDone <- seen{req.Timeout, ctx.Err()}
			// The handler's deadline is a little earlier than the caller's:
			// answer only once the caller has given up, or the answer could
			// win the race.
			<-callerDone
			return Response{}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})

		const d = 100 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		start := time.Now()
		_, err := c.Call(ctx, srv.addr, &Request{Method: "block"})
		close(callerDone)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), promptly)

		select {
		case s := <-handlerDone:
			require.ErrorIs(t, s.err, context.DeadlineExceeded, "handler ctx ended by the propagated timeout")
			require.Greater(t, s.timeout, time.Duration(0))
			require.LessOrEqual(t, s.timeout, d)
		case <-time.After(promptly):
			t.Fatal("handler ctx not cancelled")
		}

		// Cancellation (no deadline) also returns promptly; the late
		// response is dropped and the connection keeps working.
		ctx3, cancel3 := context.WithCancel(context.Background())
		release := make(chan struct{})
		srv2 := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			if req.Method == "wait" {
				cancel3()
				<-release
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		_, err = c.Call(ctx3, srv2.addr, &Request{Method: "wait"})
		require.ErrorIs(t, err, context.Canceled)
		close(release)
		resp, err := c.Call(context.Background(), srv2.addr, &Request{Payload: []byte("after")})
		require.NoError(t, err)
		require.Equal(t, "after", string(resp.Payload))

		// An already-expired ctx fails without sending.
		ctx4, cancel4 := context.WithTimeout(context.Background(), -time.Second)
		defer cancel4()
		_, err = c.Call(ctx4, srv2.addr, &Request{})
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
}

func TestRequestTimeout(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		handlerErr := make(chan error, 1)
		callerDone := make(chan struct{})
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			if req.Method == "block" {
				<-ctx.Done()
				handlerErr <- ctx.Err()
				// The handler's deadline ends about when the caller's
				// timer does: answer only once the caller has given up,
				// or the answer could win the race.
				<-callerDone
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})

		const d = 100 * time.Millisecond
		start := time.Now()
		_, err := c.Call(context.Background(), srv.addr, &Request{Method: "block", Timeout: d})
		close(callerDone)
		require.ErrorIs(t, err, ErrTimeout)
		require.NotErrorIs(t, err, ErrDial, "the request was sent")
		require.GreaterOrEqual(t, time.Since(start), d)
		require.Less(t, time.Since(start), promptly)
		select {
		case err := <-handlerErr:
			require.ErrorIs(t, err, context.DeadlineExceeded)
		case <-time.After(promptly):
			t.Fatal("handler ctx not ended by the timeout")
		}
		// The connection still works, and a timer reused from the pool
		// does not fire early.
		for i := 0; i < 3; i++ {
			resp, err := c.Call(context.Background(), srv.addr, &Request{Payload: []byte("ok"), Timeout: time.Second})
			require.NoError(t, err)
			require.Equal(t, "ok", string(resp.Payload))
		}
	})

	// A dial that has not finished when the timeout passes: not sent.
	hang := make(chan struct{})
	defer close(hang)
	c := NewClient(ClientOptions{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		select {
		case <-hang:
		case <-ctx.Done():
		}
		return nil, errors.New("no route")
	}})
	defer func() { require.NoError(t, c.Close()) }()
	_, err := c.Call(context.Background(), "10.255.255.1:1", &Request{Timeout: 50 * time.Millisecond})
	require.ErrorIs(t, err, ErrTimeout)
	require.ErrorIs(t, err, ErrDial, "the request was never sent")
}

func TestServerClosedMidCall(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		started := make(chan struct{}, 1)
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			started <- struct{}{}
			<-ctx.Done()
			return Response{Payload: []byte("too late")}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})

		errc := make(chan error, 1)
		go func() {
			_, err := c.Call(context.Background(), srv.addr, &Request{})
			errc <- err
		}()
		<-started
		srv.stop(t)
		select {
		case err := <-errc:
			require.ErrorIs(t, err, ErrConnLost)
		case <-time.After(promptly):
			t.Fatal("caller not failed after server close")
		}
	})
}

func TestDialRefused(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		ln, err := nk.listen("")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close())

		c := newTestClient(t, nk, ClientOptions{})
		_, err = c.Call(context.Background(), addr, &Request{})
		require.ErrorIs(t, err, ErrDial)
		require.NotErrorIs(t, err, ErrConnLost)
		require.Zero(t, c.liveConns(), "a failed dial is not kept")
	})
}

func TestRedialAfterServerRestart(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", echoHandler, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})
		_, err := c.Call(context.Background(), srv.addr, &Request{})
		require.NoError(t, err)

		srv.stop(t)
		// Nobody reads an idle connection, so its close is noticed when
		// the next call probes it before sending.
		testutil.Eventually(t, promptly, func() bool { return c.idleFor(srv.addr) > idleProbeAfter },
			"the connection has been idle long enough to be probed")
		_, err = c.Call(context.Background(), srv.addr, &Request{})
		require.ErrorIs(t, err, ErrDial, "a dead idle connection is dropped, not written to")
		require.NotErrorIs(t, err, ErrConnLost)
		require.Zero(t, c.liveConns())

		srv2 := startServer(t, nk, srv.addr, echoHandler, ServerOptions{})
		resp, err := c.Call(context.Background(), srv2.addr, &Request{Payload: []byte("again")})
		require.NoError(t, err)
		require.Equal(t, "again", string(resp.Payload))
	})
}

func TestClientCloseFailsInFlight(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		started := make(chan struct{}, 1)
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			started <- struct{}{}
			<-ctx.Done()
			return Response{}
		}, ServerOptions{})
		c := NewClient(ClientOptions{Dial: nk.dial})

		errc := make(chan error, 1)
		go func() {
			_, err := c.Call(context.Background(), srv.addr, &Request{})
			errc <- err
		}()
		<-started
		require.NoError(t, c.Close())
		select {
		case err := <-errc:
			require.ErrorIs(t, err, ErrClosed)
		case <-time.After(promptly):
			t.Fatal("in-flight call not failed by Close")
		}
		_, err := c.Call(context.Background(), srv.addr, &Request{})
		require.ErrorIs(t, err, ErrClosed)
		require.NoError(t, c.Close(), "Close twice")
	})
}

func TestCloseAddr(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		started := make(chan struct{}, 1)
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			if req.Method == "block" {
				started <- struct{}{}
				<-ctx.Done()
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})

		errc := make(chan error, 1)
		go func() {
			_, err := c.Call(context.Background(), srv.addr, &Request{Method: "block"})
			errc <- err
		}()
		<-started
		c.CloseAddr(srv.addr)
		select {
		case err := <-errc:
			require.ErrorIs(t, err, ErrConnLost)
		case <-time.After(promptly):
			t.Fatal("in-flight call not failed by CloseAddr")
		}
		resp, err := c.Call(context.Background(), srv.addr, &Request{Payload: []byte("x")})
		require.NoError(t, err)
		require.Equal(t, "x", string(resp.Payload))
		require.Equal(t, int32(2), srv.ln.accepted.Load())
		c.CloseAddr("nowhere") // no connection: no-op
	})
}

func TestServeConnAndCloseBeforeServe(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := NewServer(echoHandler, ServerOptions{})
		ln, err := nk.listen("")
		require.NoError(t, err)
		done := make(chan struct{})
		go func() {
			defer close(done)
			conn, err := ln.Accept()
			if err == nil {
				srv.ServeConn(conn)
			}
		}()
		c := newTestClient(t, nk, ClientOptions{})
		resp, err := c.Call(context.Background(), ln.Addr().String(), &Request{Payload: []byte("direct")})
		require.NoError(t, err)
		require.Equal(t, "direct", string(resp.Payload))
		require.NoError(t, srv.Close())
		<-done // ServeConn returned
		require.NoError(t, ln.Close())

		// Serve after Close returns nil at once and closes the listener.
		ln2, err := nk.listen("")
		require.NoError(t, err)
		require.NoError(t, srv.Serve(ln2))
		_, err = ln2.Accept()
		require.Error(t, err)
	})
}

// rawConn dials addr without a Client.
func rawConn(t *testing.T, nk netKind, addr string) net.Conn {
	t.Helper()
	var conn net.Conn
	var err error
	if nk.dial != nil {
		conn, err = nk.dial(context.Background(), addr)
	} else {
		conn, err = net.Dial("tcp", addr)
	}
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func frameBytes(version, kind byte, body ...byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(2+len(body)))
	return append(append(b, version, kind), body...)
}

func TestMalformedRequestsCloseConnection(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		srv := startServer(t, nk, "", echoHandler, ServerOptions{MaxFrameSize: 1024})
		good := appendRequestFrame(nil, &Request{Payload: []byte("x")}, 1, 0)
		// An oversized frame whose start holds no call ID (padded so the
		// server can read the bytes it looks at).
		bigBadID := binary.BigEndian.AppendUint32(nil, 1<<20)
		bigBadID = append(bigBadID, Version, KindRequest)
		bigBadID = append(bigBadID, bytes.Repeat([]byte{0xc1}, peekIDLen)...)
		cases := map[string][]byte{
			"bad-version":     frameBytes(9, KindRequest, good[6:]...),
			"bad-kind":        frameBytes(Version, KindResponse, good[6:]...),
			"short-frame":     {0, 0, 0, 1, Version},
			"zero-length":     {0, 0, 0, 0},
			"bad-body":        frameBytes(Version, KindRequest, 0x91, 0xc1),
			"too-few-fields":  frameBytes(Version, KindRequest, 0x92, 0x01, 0xa0),
			"trailing-bytes":  frameBytes(Version, KindRequest, append(bytes.Clone(good[6:]), 0)...),
			"truncated-close": good[:len(good)-3],
			"big-bad-id":      bigBadID,
			"bad-after-good":  append(bytes.Clone(good), frameBytes(9, KindRequest, 0x90)...),
		}
		for name, payload := range cases {
			conn := rawConn(t, nk, srv.addr)
			require.NoError(t, conn.SetDeadline(time.Now().Add(promptly)))
			_, err := conn.Write(payload)
			if name == "truncated-close" {
				require.NoError(t, err)
				_ = conn.Close()
				continue
			}
			require.NoError(t, err, name)
			// The server must close the connection (dropping any answer
			// still being computed for the good frame before the garbage).
			_, err = io.ReadAll(conn)
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "%s: server did not close the connection", name)
		}
		// The server still serves well-behaved clients.
		c := newTestClient(t, nk, ClientOptions{})
		resp, err := c.Call(context.Background(), srv.addr, &Request{Payload: []byte("ok")})
		require.NoError(t, err)
		require.Equal(t, "ok", string(resp.Payload))
	})
}

func TestMalformedResponsesFailCalls(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		okBody := appendResponseFrame(nil, &Response{Payload: []byte("x")}, 1)[6:]
		cases := map[string]func(id uint64) []byte{
			"bad-version": func(uint64) []byte { return frameBytes(7, KindResponse, okBody...) },
			"bad-kind":    func(uint64) []byte { return frameBytes(Version, KindRequest, okBody...) },
			"bad-body":    func(uint64) []byte { return frameBytes(Version, KindResponse, 0x96, 0xc1) },
			"short":       func(uint64) []byte { return []byte{0, 0, 0, 1, 1} },
			"big-bad-id": func(uint64) []byte {
				b := append(binary.BigEndian.AppendUint32(nil, DefaultMaxFrameSize+1), Version, KindResponse)
				return append(b, bytes.Repeat([]byte{0xc0}, peekIDLen)...)
			},
		}
		for name, reply := range cases {
			ln, err := nk.listen("")
			require.NoError(t, err)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // a broken peer: reads one request, answers garbage
				defer wg.Done()
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				defer conn.Close()
				fr := newFrameReader(conn, DefaultMaxFrameSize, KindRequest)
				body, _, _, err := fr.next()
				if err != nil {
					return
				}
				var req Request
				if decodeRequest(body, &req) != nil {
					return
				}
				_, _ = conn.Write(reply(req.CallID))
				_, _ = io.Copy(io.Discard, conn) // until the client closes
			}()
			c := NewClient(ClientOptions{Dial: nk.dial})
			_, err = c.Call(context.Background(), ln.Addr().String(), &Request{})
			require.ErrorIs(t, err, ErrConnLost, name)
			require.NoError(t, c.Close())
			require.NoError(t, ln.Close())
			wg.Wait()
		}
	})
}

// TestRoundTripAllocs holds the allocation budget: at most 10 heap
// allocations per call round trip, client and server together, for a 64-byte
// payload.
func TestRoundTripAllocs(t *testing.T) {
	srv := startServer(t, netKinds[0], "", echoHandler, ServerOptions{})
	c := newTestClient(t, netKinds[0], ClientOptions{})
	req := &Request{Service: "svc", Method: "echo", InstanceID: "i-1", MessageID: "m-1", Payload: make([]byte, 64)}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(500, func() {
		if _, err := c.Call(ctx, srv.addr, req); err != nil {
			panic(err)
		}
	})
	// The request frame on each side, the server's request with its
	// context, and the request's strings.
	budget := 4.0
	if testutil.RaceEnabled {
		budget++ // pooled calls are sometimes dropped
	}
	t.Logf("%.1f allocations per round trip", allocs)
	require.LessOrEqual(t, allocs, budget)

	// A timeout costs the handler's small context and no timer (pooled);
	// the race detector makes sync.Pool drop some items on purpose, so
	// allow for a pool miss.
	timed := *req
	timed.Timeout = time.Minute
	allocsTimed := testing.AllocsPerRun(500, func() {
		if _, err := c.Call(ctx, srv.addr, &timed); err != nil {
			panic(err)
		}
	})
	t.Logf("%.1f allocations per round trip with a timeout", allocsTimed)
	require.LessOrEqual(t, allocsTimed, allocs+2)
}

func TestDeadlineCtx(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()

	// Expires like context.WithDeadline, whether Done is asked before or
	// after the deadline.
	early := &deadlineCtx{Context: parent, deadline: time.Now().Add(30 * time.Millisecond)}
	require.NoError(t, early.Err())
	dl, ok := early.Deadline()
	require.True(t, ok)
	require.Equal(t, early.deadline, dl)
	select {
	case <-early.Done():
	case <-time.After(promptly):
		t.Fatal("Done not closed at the deadline")
	}
	require.ErrorIs(t, early.Err(), context.DeadlineExceeded)
	late := &deadlineCtx{Context: parent, deadline: time.Now().Add(-time.Millisecond)}
	require.ErrorIs(t, late.Err(), context.DeadlineExceeded)
	<-late.Done()

	// Released (the handler returned): canceled, and Done is closed even
	// if first asked afterwards.
	rel := &deadlineCtx{Context: parent, deadline: time.Now().Add(time.Hour)}
	rel.release()
	require.ErrorIs(t, rel.Err(), context.Canceled)
	<-rel.Done()

	// The parent (the connection) ending ends it too.
	child := &deadlineCtx{Context: parent, deadline: time.Now().Add(time.Hour)}
	done := child.Done()
	cancelParent()
	<-done
	require.ErrorIs(t, child.Err(), context.Canceled)
	child.release()
}

// A handler that holds the reader role (it ran inline) must not hold up
// later requests on the same connection for long: the Server passes the
// role on once the handler has run for handoffDelay.
func TestSlowHandlerDoesNotBlockConnection(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		release := make(chan struct{})
		started := make(chan struct{}, 1)
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			if req.Method == "slow" {
				started <- struct{}{}
				<-release
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		c := newTestClient(t, nk, ClientOptions{})
		_, err := c.Call(context.Background(), srv.addr, &Request{}) // connect
		require.NoError(t, err)

		slow := make(chan error, 1)
		go func() {
			_, err := c.Call(context.Background(), srv.addr, &Request{Method: "slow"})
			slow <- err
		}()
		<-started
		for i := 0; i < 20; i++ {
			resp, err := c.Call(context.Background(), srv.addr, &Request{Method: "fast", Payload: []byte("x")})
			require.NoError(t, err)
			require.Equal(t, "x", string(resp.Payload))
		}
		select {
		case err := <-slow:
			t.Fatalf("slow call returned before its handler was released: %v", err)
		default:
		}
		close(release)
		require.NoError(t, <-slow)
		require.Equal(t, int32(1), srv.ln.accepted.Load(), "all on one connection")
	})
}

// Requests that arrive together for fast handlers are answered in one
// batch. If a handler in the batch turns out slow, the answers queued before
// it still go out (the monitor writes them when it passes the reader role
// on), and the requests after it are served meanwhile.
func TestBatchedRepliesBehindSlowHandler(t *testing.T) {
	forEachNet(t, func(t *testing.T, nk netKind) {
		release := make(chan struct{})
		srv := startServer(t, nk, "", func(ctx context.Context, req *Request) Response {
			if req.Method == "slow" {
				<-release
			}
			return Response{Payload: req.Payload}
		}, ServerOptions{})
		defer close(release)
		conn := rawConn(t, nk, srv.addr)
		require.NoError(t, conn.SetDeadline(time.Now().Add(promptly)))
		// One write: fast (1), fast (2), slow (3). Nothing follows the slow
		// one, so only the monitor can write the answers queued before it.
		var batch []byte
		for id, m := range []string{"", "fast", "fast", "slow"} {
			if id > 0 {
				batch = appendRequestFrame(batch, &Request{Method: m, Payload: []byte(m)}, uint64(id), 0)
			}
		}
		_, err := conn.Write(batch)
		require.NoError(t, err)
		fr := newFrameReader(conn, DefaultMaxFrameSize, KindResponse)
		got := map[uint64]string{}
		read := func(n int) {
			for len(got) < n {
				body, _, _, err := fr.next()
				require.NoError(t, err, "answers while 3 runs; got %v", got)
				var resp Response
				require.NoError(t, decodeResponse(body, &resp))
				require.Nil(t, resp.Err)
				got[resp.CallID] = string(resp.Payload)
			}
		}
		read(2)
		// A request after it is served while it runs.
		_, err = conn.Write(appendRequestFrame(nil, &Request{Method: "fast", Payload: []byte("fast")}, 4, 0))
		require.NoError(t, err)
		read(3)
		require.Equal(t, map[uint64]string{1: "fast", 2: "fast", 4: "fast"}, got)
	})
}
