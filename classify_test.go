package aegis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/rpc"
)

// TestClassify runs every kind of attempt result through the one
// classification and checks the outcome, the error the caller sees and
// what the caller may do next, for idempotent and non-idempotent methods.
func TestClassify(t *testing.T) {
	inst := &Instance{Service: "svc", ID: "inst-0", Addr: "10.0.0.1:7947"}
	const attemptTimeout = 5 * time.Second
	bg := context.Background()
	canceled, cancel := context.WithCancel(bg)
	cancel()
	// A deadline that has passed, its timer not yet fired.
	early := pastDeadlineCtx{bg, time.Now().Add(-time.Millisecond)}
	dialTimeoutErr := fmt.Errorf("%w: %w: %s: %w", rpc.ErrTimeout, rpc.ErrDial, inst.Addr, &net.OpError{Op: "dial", Err: dialTimeout{}})
	remote := func(code, msg string, retryable bool) *rpc.ErrorInfo {
		return &rpc.ErrorInfo{Code: code, Message: msg, Retryable: retryable}
	}
	type want struct {
		o                 outcome
		is, isNot         error
		sameIdem, sameNon bool
		overIdem, overNon bool
		live              liveness
	}
	cases := []struct {
		name        string
		ctx         context.Context
		err         error          // from the call client
		info        *rpc.ErrorInfo // or the remote's error answer
		callerBound bool
		want        want
	}{
		{name: "lost connection", ctx: bg, err: fmt.Errorf("%w: reset", rpc.ErrConnLost),
			want: want{o: outcomeConnLost, is: ErrInstanceUnavailable, sameIdem: true, sameNon: true, overIdem: true, live: failing}},
		{name: "refused dial", ctx: bg, err: fmt.Errorf("%w: connection refused", rpc.ErrDial),
			want: want{o: outcomeDialRefused, is: ErrInstanceUnavailable, overIdem: true, overNon: true, live: failing}},
		{name: "dial timeout", ctx: bg, err: dialTimeoutErr,
			want: want{o: outcomeDialTimeout, is: ErrTimeout, overIdem: true, overNon: true, live: failing}},
		{name: "attempt timeout", ctx: bg, err: fmt.Errorf("%w: after 5s", rpc.ErrTimeout),
			want: want{o: outcomeAttemptTimeout, is: ErrTimeout, isNot: ErrInstanceUnavailable, sameNon: true, overIdem: true, live: failing}},
		{name: "other transport failure", ctx: bg, err: errors.New("rpc: malformed response"),
			want: want{o: outcomeUnavailable, is: ErrInstanceUnavailable, overIdem: true, live: failing}},
		{name: "caller deadline seen early", ctx: early, err: fmt.Errorf("rpc: call svc.m: %w", context.DeadlineExceeded),
			want: want{o: outcomeCallerDeadline, is: ErrTimeout, isNot: ErrInstanceUnavailable, live: failing}},
		{name: "dial timeout without a caller deadline is not the caller's", ctx: bg, err: fmt.Errorf("%w: %w", rpc.ErrDial, &net.OpError{Op: "dial", Err: dialTimeout{}}),
			want: want{o: outcomeDialRefused, is: ErrInstanceUnavailable, overIdem: true, overNon: true, live: failing}},
		{name: "caller canceled", ctx: canceled, err: context.Canceled,
			want: want{o: outcomeCanceled, is: context.Canceled, live: neutral}},
		{name: "client closed", ctx: bg, err: rpc.ErrClosed,
			want: want{o: outcomeShutdown, is: ErrShutdown, live: neutral}},
		{name: "request too large", ctx: bg, err: fmt.Errorf("%w: 5 MiB", rpc.ErrFrameTooLarge),
			want: want{o: outcomeTooLarge, is: ErrMessageTooLarge, live: neutral}},
		{name: "remote unavailable", ctx: bg, info: remote(CodeUnavailable, "draining", true),
			want: want{o: outcomeRemoteUnavailable, is: ErrInstanceUnavailable, overIdem: true, overNon: true, live: failing}},
		{name: "remote retryable", ctx: bg, info: remote(CodeHandler, "overloaded", true),
			want: want{o: outcomeRemoteRetryable, overIdem: true, live: alive}},
		{name: "in progress", ctx: bg, info: remote(CodeInProgress, "still running", false),
			want: want{o: outcomeInProgress, live: alive}},
		{name: "handler error", ctx: bg, info: remote(CodeHandler, "bad input", false),
			want: want{o: outcomeHandlerError, live: alive}},
		{name: "panic", ctx: bg, info: remote(rpc.CodePanic, "boom", false),
			want: want{o: outcomePanic, live: alive}},
		{name: "remote frame too large", ctx: bg, info: remote(rpc.CodeFrameTooLarge, "5 MiB", false),
			want: want{o: outcomeTooLarge, is: ErrMessageTooLarge, live: neutral}},
		{name: "remote attempt deadline", ctx: bg, info: remote(CodeDeadline, "deadline exceeded", false),
			want: want{o: outcomeAttemptTimeout, is: ErrTimeout, sameNon: true, overIdem: true, live: failing}},
		{name: "remote caller deadline", ctx: bg, info: remote(CodeDeadline, "deadline exceeded", false), callerBound: true,
			want: want{o: outcomeCallerDeadline, is: context.DeadlineExceeded, live: failing}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var o outcome
			var err error
			if tc.info != nil {
				o, err = classifyRemote(inst, tc.info, tc.callerBound, attemptTimeout)
			} else {
				o, err = classifyTransport(tc.ctx, inst, tc.err, attemptTimeout)
			}
			w := tc.want
			require.Equal(t, w.o, o, "outcome (%v)", err)
			require.Error(t, err)
			if w.is != nil {
				require.ErrorIs(t, err, w.is)
			}
			if w.isNot != nil {
				require.NotErrorIs(t, err, w.isNot)
			}
			if tc.info != nil && o != outcomeCallerDeadline && o != outcomeAttemptTimeout {
				var re *RemoteError
				require.ErrorAs(t, err, &re, "the handler's error reaches the caller")
			}
			require.Equal(t, w.sameIdem, o.retrySame(true), "same-instance retry, idempotent")
			require.Equal(t, w.sameNon, o.retrySame(false), "same-instance retry, non-idempotent")
			require.Equal(t, w.overIdem, o.failover(true), "failover, idempotent")
			require.Equal(t, w.overNon, o.failover(false), "failover, non-idempotent")
			require.Equal(t, w.live, outcomeRules[o].live, "liveness")
		})
	}
}

// A spent retry budget stops CallWithFailover after its first instance,
// whatever the outcome allowed, and says so.
func TestBudgetSpentStopsFailover(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.RetryBudgetRatio = 0
		cfg.RetryBudgetMinPerSecond = 0
	})
	counts := c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		return nil, Retryable(errors.New("everyone is down"))
	})
	_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
	require.ErrorIs(t, err, ErrRetryBudgetExhausted)
	var fe *FailoverError
	require.ErrorAs(t, err, &fe)
	require.Len(t, fe.Attempts, 1)
	var total int64
	for _, cnt := range counts {
		total += cnt.Load()
	}
	require.Equal(t, int64(1), total, "one attempt, no retry")
}

// pastDeadlineCtx reports a deadline without ending: a context whose timer
// has not fired yet.
type pastDeadlineCtx struct {
	context.Context
	dl time.Time
}

func (c pastDeadlineCtx) Deadline() (time.Time, bool) { return c.dl, true }

// dialTimeout is a dial's timeout as net and the in-memory transport report
// it: it matches context.DeadlineExceeded.
type dialTimeout struct{}

func (dialTimeout) Error() string        { return "i/o timeout" }
func (dialTimeout) Timeout() bool        { return true }
func (dialTimeout) Is(target error) bool { return target == context.DeadlineExceeded }
