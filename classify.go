// This file decides, once per attempt, what a call's failure means: the
// outcome of an attempt and what the caller may do next.

package aegis

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aegisipc/aegis/internal/rpc"
)

// outcome is the class of one call attempt's result. Every decision the
// caller makes after an attempt (retry the same instance, move to another,
// eject the instance, pause) reads the outcome's row in outcomeRules, so
// the error chain is walked once, in classify.
type outcome uint8

const (
	outcomeOK outcome = iota
	// The request provably never reached a handler.
	outcomeDialRefused // no connection could be opened
	outcomeDialTimeout // opening the connection took the whole attempt timeout
	outcomeRemoteUnavailable
	// The request may have been delivered.
	outcomeConnLost        // the connection broke after the request may have been written
	outcomeAttemptTimeout  // no answer within the attempt timeout
	outcomeUnavailable     // any other transport failure; delivery unknown
	outcomeRemoteRetryable // the handler returned an error marked Retryable
	// Nothing more is tried after these.
	outcomeCallerDeadline // the caller's deadline passed (seen by ctx or only by the clock)
	outcomeCanceled       // the caller canceled ctx
	outcomeShutdown       // this node's call client is closed
	outcomeTooLarge       // a frame exceeded MaxFrameSize, here or there
	outcomeInProgress     // a retry found the first execution still running
	outcomeHandlerError   // the handler returned a plain error
	outcomePanic          // the handler panicked
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	"ok", "dial-refused", "dial-timeout", "remote-unavailable", "conn-lost", "attempt-timeout",
	"unavailable", "remote-retryable", "caller-deadline", "canceled", "shutdown", "too-large",
	"in-progress", "handler-error", "panic",
}

func (o outcome) String() string { return outcomeNames[o] }

// liveness is what an outcome says about the instance, for passive
// ejection.
type liveness uint8

const (
	neutral liveness = iota // says nothing (the caller gave up, or the fault is local)
	alive                   // it answered
	failing                 // it did not answer
)

// outcomeRule is what the caller may do after an outcome. For a
// non-idempotent method (Service.NonIdempotent) the columns ending in Non
// apply: it moves to another instance only when the request provably never
// reached the first one, and is retried on the same instance (where dedup
// answers a request it already ran) when it may have.
type outcomeRule struct {
	sameIdem, sameNon bool // retry on the same instance with the same message ID
	overIdem, overNon bool // fail over to another instance
	pause             bool // a short jittered pause before failing over (the instance may be shedding load)
	live              liveness
}

var outcomeRules = [numOutcomes]outcomeRule{
	outcomeOK:                {live: alive},
	outcomeDialRefused:       {overIdem: true, overNon: true, live: failing},
	outcomeDialTimeout:       {overIdem: true, overNon: true, live: failing},
	outcomeRemoteUnavailable: {overIdem: true, overNon: true, pause: true, live: failing},
	outcomeConnLost:          {sameIdem: true, sameNon: true, overIdem: true, live: failing},
	outcomeAttemptTimeout:    {sameNon: true, overIdem: true, live: failing},
	outcomeUnavailable:       {overIdem: true, live: failing},
	outcomeRemoteRetryable:   {overIdem: true, pause: true, live: alive},
	// A caller's deadline shorter than AttemptTimeout is the only sign a
	// hung instance gives such a caller, so it counts against the instance.
	outcomeCallerDeadline: {live: failing},
	outcomeCanceled:       {},
	outcomeShutdown:       {},
	outcomeTooLarge:       {},
	outcomeInProgress:     {live: alive},
	outcomeHandlerError:   {live: alive},
	outcomePanic:          {live: alive},
}

// retrySame reports whether the call may be retried on the same instance.
func (o outcome) retrySame(idempotent bool) bool {
	r := &outcomeRules[o]
	return idempotent && r.sameIdem || !idempotent && r.sameNon
}

// failover reports whether the call may move to another instance.
func (o outcome) failover(idempotent bool) bool {
	r := &outcomeRules[o]
	return idempotent && r.overIdem || !idempotent && r.overNon
}

// classifyTransport classifies an error from the call client and returns
// the error the caller sees: ErrMessageTooLarge, ErrTimeout,
// ErrInstanceUnavailable or ErrShutdown (wrapped), or the caller's own
// cancellation.
func classifyTransport(ctx context.Context, inst *Instance, err error, attemptTimeout time.Duration) (outcome, error) {
	switch {
	case errors.Is(err, rpc.ErrFrameTooLarge):
		return outcomeTooLarge, fmt.Errorf("%w: %s.%s on %s: %w", ErrMessageTooLarge, inst.Service, inst.ID, inst.Addr, err)
	case errors.Is(ctx.Err(), context.Canceled):
		return outcomeCanceled, fmt.Errorf("aegis: call to %s canceled: %w", inst.ID, ctx.Err())
	case ctx.Err() != nil, deadlinePassed(ctx) && errors.Is(err, context.DeadlineExceeded):
		// The call client can see the caller's deadline pass a moment
		// before ctx's own timer fires. (A dial's own timeout also matches
		// context.DeadlineExceeded, hence the clock.)
		return outcomeCallerDeadline, fmt.Errorf("%w: caller's deadline passed waiting for %s: %w", ErrTimeout, inst.ID, context.DeadlineExceeded)
	case errors.Is(err, rpc.ErrTimeout):
		o := outcomeAttemptTimeout
		if errors.Is(err, rpc.ErrDial) {
			o = outcomeDialTimeout
		}
		return o, fmt.Errorf("%w: no answer from %s within %v: %w", ErrTimeout, inst.ID, attemptTimeout, err)
	case errors.Is(err, rpc.ErrClosed):
		return outcomeShutdown, fmt.Errorf("%w: %w", ErrShutdown, err)
	}
	o := outcomeUnavailable
	switch {
	case errors.Is(err, rpc.ErrDial):
		o = outcomeDialRefused
	case errors.Is(err, rpc.ErrConnLost):
		o = outcomeConnLost
	}
	return o, fmt.Errorf("%w: %s at %s: %w", ErrInstanceUnavailable, inst.ID, inst.Addr, err)
}

// classifyRemote classifies an error answer. callerBound says the
// handler's deadline was the caller's rather than the attempt timeout.
func classifyRemote(inst *Instance, info *rpc.ErrorInfo, callerBound bool, attemptTimeout time.Duration) (outcome, error) {
	re := &RemoteError{Code: info.Code, Message: info.Message, Retryable: info.Retryable}
	switch re.Code {
	case CodeUnavailable:
		return outcomeRemoteUnavailable, re
	case rpc.CodeFrameTooLarge, rpc.CodeResponseTooLarge:
		re.Code = CodeTooLarge
		return outcomeTooLarge, re
	case CodePanic:
		return outcomePanic, re
	case CodeInProgress:
		return outcomeInProgress, re
	case CodeDeadline:
		if callerBound {
			return outcomeCallerDeadline, fmt.Errorf("%w: caller's deadline passed while %s ran the call: %w (%w)", ErrTimeout, inst.ID, context.DeadlineExceeded, re)
		}
		return outcomeAttemptTimeout, fmt.Errorf("%w: %s ran out of the attempt timeout (%v): %w", ErrTimeout, inst.ID, attemptTimeout, re)
	}
	if re.Retryable {
		return outcomeRemoteRetryable, re
	}
	return outcomeHandlerError, re
}

// deadlinePassed reports whether ctx has a deadline and the clock is past
// it, whether or not ctx has noticed yet. Context deadlines are wall-clock
// times, so this reads the wall clock.
func deadlinePassed(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}
