// This file runs handlers: their context, panics, and the handler-time average that picks how they run.

package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// inbound is one request being served: the request and the handler's
// context, allocated together.
type inbound struct {
	req Request
	dc  deadlineCtx
}

// handle runs the handler for in's request and sends its response.
func (sc *serverConn) handle(in *inbound) {
	resp := sc.run(in, sc.s.now())
	sc.reply(in.req.CallID, &resp, false)
}

// run runs the handler for in's request, which started at start
// (nanoseconds since the Server's epoch), and returns its response. It
// keeps the average handler time and the connection's last activity up to
// date.
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
	end := sc.s.now()
	sc.lastActive.Store(end)
	d := end - start
	avg := sc.handlerNanos.Load()
	sc.handlerNanos.Store(avg + (d-avg)/8) // racy between goroutines: an estimate
	return resp
}

// keepRole reports whether the reader runs the handler of the request it
// has just decoded itself, holding the reader role, rather than first
// passing the role on. It keeps the role
//   - while handlers have been fast (average under inlineHandlerTime), if
//     nothing is buffered or whole requests are: they run one after
//     another and are answered in one write;
//   - while handlers have been neither fast nor slow, if nothing is
//     buffered: no goroutine is woken for a request that may be the last.
//
// Once handlers have been slow (average of slowHandlerTime or more), it
// never does: the monitor would take the role from the handler anyway,
// and the requests behind it would wait for the monitor's tick.
func (sc *serverConn) keepRole() bool {
	avg := sc.handlerNanos.Load()
	switch {
	case avg >= int64(slowHandlerTime):
		return false
	case sc.fr.buffered() == 0:
		return true
	}
	return avg < int64(inlineHandlerTime) && sc.fr.frameBuffered()
}

// Average handler times that pick how handlers run (see keepRole). Under
// inlineHandlerTime, a reader with several whole requests buffered runs
// them one after another and answers them in one write, instead of handing
// each next one to another goroutine. From slowHandlerTime on, every
// handler runs on a goroutine other than the reader's. The monitor still
// hands the role on from any one handler that runs for handoffDelay.
const (
	inlineHandlerTime = 20 * time.Microsecond
	slowHandlerTime   = time.Millisecond
)

// slowHandler records that a handler has run for d nanoseconds and is still
// running (the monitor took the role from it): the average becomes at
// least d and slowHandlerTime, so that the requests already read behind
// it, and those after, run side by side at once rather than each holding
// the role until the monitor's next tick. Handlers that then turn out
// quick bring the average down again.
func (sc *serverConn) slowHandler(d int64) {
	d = max(d, int64(slowHandlerTime))
	for {
		avg := sc.handlerNanos.Load()
		if avg >= d || sc.handlerNanos.CompareAndSwap(avg, d) {
			return
		}
	}
}

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
			s.stats.panicking.Add(1)
			s.rl.Log(slog.LevelError, "handler-panic", "rpc: handler panicked",
				"service", req.Service, "method", req.Method, "panic", v)
			resp = Response{Err: &ErrorInfo{Code: CodePanic, Message: fmt.Sprint(v)}}
		}
	}()
	return s.h(ctx, req)
}
