// This file holds the call server: the part of a Node that answers calls to
// its local instances (lookup, dedup, running handlers, draining).

package aegis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/aegisipc/aegis/internal/rpc"
)

// callServer answers calls to a Node's local instances. The set of served
// instances is a sync.Map that Register and Deregister change one entry at
// a time (so registering costs the same with ten thousand instances as
// with one), and a call finds its instance without taking a lock. Safe for
// concurrent use.
type callServer struct {
	rpc     *rpc.Server
	name    string
	log     *slog.Logger
	stats   *nodeStats
	met     *nodeMetrics
	tracer  trace.Tracer // nil: tracing off
	prop    propagation.TextMapPropagator
	running func() bool                         // the node neither leaves nor has stopped
	system  func(req *rpc.Request) rpc.Response // answers keysService
	roles   func(req *rpc.Request) rpc.Response // answers rolesService
	now     func() int64                        // the node's clock, as Node.mono

	served sync.Map // instKey → *Registration
}

func newCallServer(n *Node) *callServer {
	s := &callServer{name: n.name, log: n.log, stats: &n.stats, met: n.met, tracer: n.tracer, prop: n.cfg.Propagator,
		running: func() bool { return n.state.Load() == stateRunning }, system: n.serveKeys, roles: n.serveRoles,
		now: func() int64 { return n.mono(n.clk.Now()) }}
	l := n.cfg.CallLimits
	s.rpc = rpc.NewServer(s.serveCall, rpc.ServerOptions{MaxFrameSize: n.cfg.MaxFrameSize, Logger: n.log,
		FrameTimeout: l.FrameTimeout, IdleTimeout: l.IdleTimeout, MaxConns: l.MaxConns,
		MaxConnsPerIP: l.MaxConnsPerIP, MaxInflightPerConn: l.MaxInflightPerConn})
	return s
}

// lookup returns the registration serving (service, id) here, or nil.
func (s *callServer) lookup(service, id string) *Registration {
	r, _ := s.served.Load(instKey{service, id})
	reg, _ := r.(*Registration)
	return reg
}

// add starts serving r under k.
func (s *callServer) add(k instKey, r *Registration) { s.served.Store(k, r) }

// remove stops serving r under k (a later registration under k stays).
func (s *callServer) remove(k instKey, r *Registration) { s.served.CompareAndDelete(k, r) }

func unavailable(format string, args ...any) rpc.Response {
	return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeUnavailable, Message: fmt.Sprintf(format, args...), Retryable: true}}
}

// serveCall runs one incoming call on the addressed local instance, in a
// server span when tracing is on, measuring it when the server duration
// metric is wanted.
func (s *callServer) serveCall(ctx context.Context, req *rpc.Request) rpc.Response {
	measure := s.met.serverDur.Enabled(ctx)
	if s.tracer == nil && !measure {
		return s.serve(ctx, req)
	}
	start := time.Now()
	var span trace.Span
	if s.tracer != nil {
		ctx, span = startServerSpan(ctx, s.tracer, s.prop, req)
	}
	resp := s.serve(ctx, req)
	if measure {
		s.met.recordServer(ctx, req, s.lookup(req.Service, req.InstanceID) != nil, &resp, time.Since(start))
	}
	if span != nil {
		endServerSpan(span, resp.Err)
	}
	return resp
}

// serve runs one incoming call on the addressed local instance.
func (s *callServer) serve(ctx context.Context, req *rpc.Request) rpc.Response {
	r := s.lookup(req.Service, req.InstanceID)
	if r == nil && req.Service == keysService {
		return s.system(req)
	}
	if r == nil && req.Service == rolesService {
		return s.roles(req)
	}
	if r == nil || r.done.Load() {
		return unavailable("instance %s/%s is not registered on node %s", req.Service, req.InstanceID, s.name)
	}
	if st := Status(r.status.Load()); st == StatusDraining || !s.running() {
		return unavailable("instance %s/%s is draining", req.Service, req.InstanceID)
	}
	if r.svc.Role != RoleNone {
		if ok, why := r.serving(s.now()); !ok {
			return unavailable("instance %s/%s %s in role group %s", req.Service, req.InstanceID, why, r.group)
		}
	}
	r.callStarted()
	defer r.callFinished()
	if r.dedup == nil || req.MessageID == "" {
		return s.runHandler(ctx, r, req)
	}
	e, first := r.dedup.Begin(req.MessageID)
	if !first {
		// A retry of a call this instance has seen: answer from the first
		// execution, waiting for it if it is still running.
		s.stats.duplicates.Add(1)
		s.met.duplicates.Add(bg, 1)
		if s.tracer != nil {
			trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("aegis.dedup_hit", true))
		}
		select {
		case <-e.Done():
			return *e.Result()
		case <-ctx.Done():
			// Not "unavailable": that would let a non-idempotent call move
			// to another instance while this one runs it.
			return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeInProgress,
				Message: fmt.Sprintf("message %s is still running on %s/%s", req.MessageID, req.Service, req.InstanceID)}}
		}
	}
	// The entry keeps the response for later duplicates; they share its
	// payload, which nothing downstream modifies.
	out := s.runHandler(ctx, r, req)
	r.dedup.Finish(e, out, cacheable(&out))
	return out
}

// responseSize is what a response kept by the dedup cache holds.
func responseSize(r rpc.Response) int {
	n := len(r.Payload)
	if r.Err != nil {
		n += len(r.Err.Code) + len(r.Err.Message)
	}
	return n
}

// cacheable says which outcomes the dedup cache keeps: successes and
// non-retryable handler errors (including panics) — the handler ran and must
// not run again. Retryable errors, "unavailable" and deadline errors are not
// kept: the next try runs the handler.
func cacheable(resp *rpc.Response) bool {
	return resp.Err == nil || !resp.Err.Retryable && resp.Err.Code != CodeUnavailable && resp.Err.Code != CodeDeadline
}

// runHandler runs r's handler for req, turning errors and panics into error
// responses.
func (s *callServer) runHandler(ctx context.Context, r *Registration, req *rpc.Request) (resp rpc.Response) {
	areq := &Request{Service: req.Service, Method: req.Method, InstanceID: req.InstanceID,
		MessageID: req.MessageID, Payload: req.Payload, Header: req.Header}
	if r.svc.Role != RoleNone {
		areq.Epoch = r.role.epoch.Load()
	}
	defer func() {
		if p := recover(); p != nil {
			s.log.ErrorContext(ctx, "handler panicked", append(traceLogAttrs(ctx), "service", req.Service, "method", req.Method,
				"instance", req.InstanceID, "message_id", req.MessageID, "panic", p, "stack", string(debug.Stack()))...)
			resp = rpc.Response{Err: &rpc.ErrorInfo{Code: CodePanic, Message: fmt.Sprintf("handler for %s.%s panicked: %v", req.Service, req.Method, p)}}
		}
	}()
	if r.svc.Handler == nil {
		return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeNoHandler,
			Message: fmt.Sprintf("instance %s/%s serves no Aegis calls (it registered only Endpoints)", req.Service, req.InstanceID)}}
	}
	out, err := r.svc.Handler(ctx, areq)
	if err != nil {
		return errorResponse(ctx, err)
	}
	return rpc.Response{Payload: out}
}

// errorResponse carries a handler's error back to the caller.
func errorResponse(ctx context.Context, err error) rpc.Response {
	if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
		return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeDeadline, Message: err.Error()}}
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return rpc.Response{Err: &rpc.ErrorInfo{Code: re.Code, Message: re.Message, Retryable: re.Retryable}}
	}
	return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeHandler, Message: err.Error()}}
}
