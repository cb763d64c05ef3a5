package aegis

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/aegisipc/aegis/internal/rpc"
)

// Remote error codes set by Aegis itself (handlers choose their own).
const (
	// CodeUnavailable: the addressed instance is not on the node, draining,
	// or the node is shutting down. Retryable.
	CodeUnavailable = "unavailable"
	// CodeHandler: the handler returned a plain error.
	CodeHandler = "handler"
	// CodePanic: the handler panicked; the node kept serving.
	CodePanic = "panic"
	// CodeUnknownMethod: no handler for the method (see Mux).
	CodeUnknownMethod = "unknown-method"
	// CodeTooLarge: the request or the response exceeded MaxFrameSize.
	CodeTooLarge = "too-large"
	// CodeDeadline: the handler gave up because the call's deadline (the
	// caller's, propagated, or the attempt timeout) passed; the caller sees
	// ErrTimeout. Not cached by deduplication: a retry runs the handler.
	CodeDeadline = "deadline-exceeded"
	// CodeInProgress: a retry found the first execution of its message ID
	// still running and stopped waiting for it (the caller's deadline
	// passed or it went away). Not retryable: the handler is running.
	CodeInProgress = "in-progress"
)

// ErrMessageTooLarge: a request or response exceeded Config.MaxFrameSize.
var ErrMessageTooLarge = errors.New("aegis: message too large")

// Is lets errors.Is match a RemoteError with code CodeUnavailable against
// ErrInstanceUnavailable, and one with CodeTooLarge against
// ErrMessageTooLarge.
func (e *RemoteError) Is(target error) bool {
	switch target {
	case ErrInstanceUnavailable:
		return e.Code == CodeUnavailable
	case ErrMessageTooLarge:
		return e.Code == CodeTooLarge
	}
	return false
}

// Retryable marks err so that CallWithFailover moves the call to another
// instance when a handler returns it. The caller sees a *RemoteError with
// Retryable set.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return &RemoteError{Code: CodeHandler, Message: err.Error(), Retryable: true}
}

// localHandler returns the registration serving (service, id) here, or nil.
func (n *Node) localHandler(service, id string) *Registration {
	m := n.served.Load()
	if m == nil {
		return nil
	}
	return (*m)[instKey{service, id}]
}

// publishServed rebuilds the lock-free map of local registrations the call
// server reads. Called with n.mu held.
func (n *Node) publishServed() {
	m := make(map[instKey]*Registration, len(n.local))
	for k, r := range n.local {
		m[k] = r
	}
	n.served.Store(&m)
}

func unavailable(format string, args ...any) rpc.Response {
	return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeUnavailable, Message: fmt.Sprintf(format, args...), Retryable: true}}
}

// serveCall runs one incoming call on the addressed local instance.
func (n *Node) serveCall(ctx context.Context, req *rpc.Request) rpc.Response {
	r := n.localHandler(req.Service, req.InstanceID)
	if r == nil || r.done.Load() {
		return unavailable("instance %s/%s is not registered on node %s", req.Service, req.InstanceID, n.name)
	}
	if st := Status(r.status.Load()); st == StatusDraining || n.state.Load() != stateRunning {
		return unavailable("instance %s/%s is draining", req.Service, req.InstanceID)
	}
	r.inflight.Add(1)
	defer r.inflight.Add(-1)
	if r.dedup == nil || req.MessageID == "" {
		return n.runHandler(ctx, r, req)
	}
	e, first := r.dedup.Begin(req.MessageID)
	if !first {
		// A retry of a call this instance has seen: answer from the first
		// execution, waiting for it if it is still running.
		n.stats.duplicates.Add(1)
		n.met.duplicates.Add(bg, 1)
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
	out := n.runHandler(ctx, r, req)
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
// not run again. Retryable errors and "unavailable" are not kept: the next
// try runs the handler.
func cacheable(resp *rpc.Response) bool {
	return resp.Err == nil || !resp.Err.Retryable && resp.Err.Code != CodeUnavailable && resp.Err.Code != CodeDeadline
}

// runHandler runs r's handler for req, turning errors and panics into error
// responses.
func (n *Node) runHandler(ctx context.Context, r *Registration, req *rpc.Request) (resp rpc.Response) {
	areq := &Request{Service: req.Service, Method: req.Method, InstanceID: req.InstanceID,
		MessageID: req.MessageID, Payload: req.Payload, Header: req.Header}
	defer func() {
		if p := recover(); p != nil {
			n.log.Error("handler panicked", "service", req.Service, "method", req.Method, "instance", req.InstanceID,
				"panic", p, "stack", string(debug.Stack()))
			resp = rpc.Response{Err: &rpc.ErrorInfo{Code: CodePanic, Message: fmt.Sprintf("handler for %s.%s panicked: %v", req.Service, req.Method, p)}}
		}
	}()
	out, err := r.svc.Handler(ctx, areq)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeDeadline, Message: err.Error()}}
		}
		var re *RemoteError
		if errors.As(err, &re) {
			return rpc.Response{Err: &rpc.ErrorInfo{Code: re.Code, Message: re.Message, Retryable: re.Retryable}}
		}
		return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeHandler, Message: err.Error()}}
	}
	return rpc.Response{Payload: out}
}

// messageID is a call's message ID: the caller's (WithMessageID) or, when
// seq is non-zero, prefix followed by seq in base 36. The generated form is
// spelled out only in the request frame, so a call does not allocate it.
type messageID struct {
	prefix string
	seq    uint64
}

// messageIDFor returns the call's message ID: o's, or a new cluster-unique
// one.
func (n *Node) messageIDFor(o *callOptions) messageID {
	if o.messageID != "" {
		return messageID{prefix: o.messageID}
	}
	return messageID{prefix: n.msgPrefix, seq: n.msgSeq.Add(1)}
}

// attempt makes one call to inst. It classifies failures:
//   - ErrInstanceUnavailable (wrapped): not delivered (dial failed, remote
//     said unavailable) or delivery unknown (connection lost);
//   - ErrTimeout (wrapped): no answer before the attempt timeout or the
//     caller's deadline;
//   - *RemoteError: the handler's error;
//   - ErrMessageTooLarge (wrapped).
func (n *Node) attempt(ctx context.Context, inst *Instance, method string, payload []byte, o *callOptions, msgID messageID, try int) ([]byte, error) {
	if inst.load != nil {
		inst.load.inflight.Add(1)
		defer inst.load.inflight.Add(-1)
	}
	req := rpc.Request{Service: inst.Service, Method: method, InstanceID: inst.ID, MessageID: msgID.prefix, MessageSeq: msgID.seq,
		Header: o.header, Payload: payload, Attempt: uint32(try), Timeout: n.cfg.AttemptTimeout}
	// Whether the handler's deadline will be the caller's rather than the
	// attempt timeout (only a deadline context costs a clock read).
	callerBound := false
	if dl, ok := ctx.Deadline(); ok {
		callerBound = time.Until(dl) <= n.cfg.AttemptTimeout
	}
	resp, err := n.client.Call(ctx, inst.Addr, &req)
	if err != nil {
		err = n.classify(ctx, inst, err)
		n.observe(inst, err)
		return nil, err
	}
	if resp.Err != nil {
		re := &RemoteError{Code: resp.Err.Code, Message: resp.Err.Message, Retryable: resp.Err.Retryable}
		switch re.Code {
		case rpc.CodeFrameTooLarge, rpc.CodeResponseTooLarge:
			re.Code = CodeTooLarge
		case rpc.CodePanic:
			re.Code = CodePanic
		case CodeDeadline:
			var err error
			if callerBound {
				err = deadlineSpent{fmt.Errorf("%w: caller's deadline passed while %s ran the call: %w (%w)", ErrTimeout, inst.ID, context.DeadlineExceeded, re)}
			} else {
				err = fmt.Errorf("%w: %s ran out of the attempt timeout (%v): %w", ErrTimeout, inst.ID, n.cfg.AttemptTimeout, re)
			}
			n.observe(inst, err)
			return nil, err
		}
		n.observe(inst, re)
		return nil, re
	}
	n.observe(inst, nil)
	return resp.Payload, nil
}

func (n *Node) classify(ctx context.Context, inst *Instance, err error) error {
	switch {
	case errors.Is(err, rpc.ErrFrameTooLarge):
		return fmt.Errorf("%w: %s.%s on %s: %w", ErrMessageTooLarge, inst.Service, inst.ID, inst.Addr, err)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("aegis: call to %s canceled: %w", inst.ID, ctx.Err())
	case ctx.Err() != nil, deadlinePassed(ctx) && errors.Is(err, context.DeadlineExceeded):
		// The call client can see the caller's deadline pass a moment
		// before ctx's own timer fires. (A dial's own timeout also matches
		// context.DeadlineExceeded, hence the clock.)
		return deadlineSpent{fmt.Errorf("%w: caller's deadline passed waiting for %s: %w", ErrTimeout, inst.ID, context.DeadlineExceeded)}
	case errors.Is(err, rpc.ErrTimeout):
		// err stays in the chain: a dial that timed out (rpc.ErrDial)
		// proves the request was never delivered.
		return fmt.Errorf("%w: no answer from %s within %v: %w", ErrTimeout, inst.ID, n.cfg.AttemptTimeout, err)
	case errors.Is(err, rpc.ErrClosed):
		return fmt.Errorf("%w: %w", ErrShutdown, err)
	}
	return fmt.Errorf("%w: %s at %s: %w", ErrInstanceUnavailable, inst.ID, inst.Addr, err)
}

// deadlinePassed reports whether ctx has a deadline and the clock is past
// it, whether or not ctx has noticed yet.
func deadlinePassed(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// deadlineSpent marks an error after which the caller's deadline is spent
// (even if its context has not noticed yet): nothing is retried.
type deadlineSpent struct{ error }

func (d deadlineSpent) Unwrap() error { return d.error }

// notDelivered reports whether err proves the request never reached a
// handler (so even a non-idempotent call may go elsewhere).
func notDelivered(err error) bool {
	if errors.Is(err, rpc.ErrDial) {
		return true
	}
	var re *RemoteError
	return errors.As(err, &re) && re.Code == CodeUnavailable
}
