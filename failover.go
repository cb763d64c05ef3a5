package aegis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis/internal/rpc"
)

// ErrRetryBudgetExhausted: CallWithFailover stopped retrying because retries
// already make up more than the budget allows (see Config.RetryBudgetRatio).
var ErrRetryBudgetExhausted = errors.New("aegis: retry budget exhausted")

// CallOption adjusts one Call or CallWithFailover.
type CallOption func(*callOptions)

type callOptions struct {
	exclude     map[string]struct{}
	maxAttempts int
	key         string
	messageID   string
	header      map[string]string
}

// WithExclude keeps the call away from the given instance IDs.
func WithExclude(instanceIDs ...string) CallOption {
	return func(o *callOptions) {
		if o.exclude == nil {
			o.exclude = make(map[string]struct{}, len(instanceIDs))
		}
		for _, id := range instanceIDs {
			o.exclude[id] = struct{}{}
		}
	}
}

// WithMaxAttempts overrides Config.MaxAttempts for one CallWithFailover.
// Values below 1 count as 1.
func WithMaxAttempts(n int) CallOption {
	return func(o *callOptions) { o.maxAttempts = max(n, 1) }
}

// WithKey sets the routing key used by ConsistentHash (and any Balancer that
// reads RouteRequest.Key).
func WithKey(key string) CallOption {
	return func(o *callOptions) { o.key = key }
}

// WithMessageID sets the call's message ID instead of a generated one. Every
// attempt of the call carries it (Request.MessageID on the handler side).
func WithMessageID(id string) CallOption {
	return func(o *callOptions) { o.messageID = id }
}

// WithHeader adds a header the handler sees in Request.Header.
func WithHeader(key, value string) CallOption {
	return func(o *callOptions) {
		if o.header == nil {
			o.header = make(map[string]string)
		}
		o.header[key] = value
	}
}

// applyOptions applies opts to a copy of o on the heap only when there are
// options (an option function makes its argument escape), so that a call
// without options allocates nothing for them.
func applyOptions(o callOptions, opts []CallOption) callOptions {
	if len(opts) == 0 {
		return o
	}
	p := new(callOptions)
	*p = o
	for _, opt := range opts {
		opt(p)
	}
	return *p
}

// Call calls method on one healthy instance of service picked by the
// Balancer. It does not fail over, but when the connection is lost after the
// request may have been delivered, it retries the same instance with the
// same message ID (see Config.SameInstanceRetries), where deduplication
// makes the handler run once. Errors: ErrServiceNotFound,
// ErrNoHealthyInstances, ErrInstanceUnavailable, ErrTimeout,
// ErrMessageTooLarge (all wrapped) or the handler's *RemoteError.
func (n *Node) Call(ctx context.Context, service, method string, payload []byte, opts ...CallOption) ([]byte, error) {
	o := applyOptions(callOptions{}, opts)
	inst, err := n.pick(service, method, &o)
	if err != nil {
		return nil, err
	}
	id := n.messageIDFor(&o)
	n.budget.deposit()
	return n.tryInstance(ctx, &inst, method, payload, &o, id, nil)
}

// CallWithFailover calls method on a healthy instance of service and, when
// the attempt fails in a way another instance may not, tries another one:
// up to MaxAttempts distinct instances in all, each failed one added to the
// exclusion set.
//
// The combined policy, all of it inside the caller's deadline:
//   - every attempt carries the call's one message ID;
//   - on each instance, a lost connection (the request may have been
//     delivered) is retried on the same instance up to SameInstanceRetries
//     times with jittered exponential backoff; its dedup cache answers a
//     request it already ran. An attempt timeout is retried the same way
//     for methods the instance declared non-idempotent (unless the
//     connection could not even be opened); idempotent ones move on at
//     once;
//   - then the call moves to another instance when the failure was
//     "unavailable" (connection refused or reset, instance gone or
//     draining), an attempt timeout, or a *RemoteError marked Retryable.
//     For a method the instance declared non-idempotent
//     (Service.NonIdempotent) it moves only if the request provably never
//     reached the first instance (dial refused, instance unknown or
//     draining);
//   - it never retries other handler errors, nor once ctx is done, nor when
//     the retry budget (RetryBudgetRatio) is spent.
//
// At most MaxAttempts × (1 + SameInstanceRetries) tries are made, each
// bounded by AttemptTimeout. A failure after a single try is returned as
// is. Otherwise a failed call returns a *FailoverError listing every try;
// errors.Is and errors.As look through it (ErrNoHealthyInstances when
// candidates ran out).
func (n *Node) CallWithFailover(ctx context.Context, service, method string, payload []byte, opts ...CallOption) ([]byte, error) {
	o := applyOptions(callOptions{maxAttempts: n.cfg.MaxAttempts}, opts)
	id := n.messageIDFor(&o)
	n.budget.deposit()
	var attempts []Attempt
	var stopErr error
	copied := false
	for distinct := 0; distinct < o.maxAttempts; distinct++ {
		if distinct > 0 && !n.budget.withdraw() {
			stopErr = ErrRetryBudgetExhausted
			break
		}
		inst, err := n.pick(service, method, &o)
		if err != nil {
			if len(attempts) == 0 {
				return nil, err
			}
			stopErr = err
			break
		}
		out, err := n.tryInstance(ctx, &inst, method, payload, &o, id, &attempts)
		if err == nil {
			return out, nil
		}
		if !retryable(ctx, err) || !inst.idempotent(method) && !notDelivered(err) {
			break
		}
		if !copied {
			// Copy the caller's exclusions before adding to them.
			ex := make(map[string]struct{}, len(o.exclude)+o.maxAttempts)
			for k := range o.exclude {
				ex[k] = struct{}{}
			}
			o.exclude, copied = ex, true
		}
		o.exclude[inst.ID] = struct{}{}
		if wait := backoff(err, distinct); wait > 0 && !sleepCtx(ctx, wait) {
			stopErr = ctx.Err()
			break
		}
	}
	if len(attempts) == 1 && stopErr == nil {
		return nil, attempts[0].Err
	}
	return nil, &FailoverError{Service: service, Attempts: attempts, Err: stopErr}
}

// tryInstance calls inst, retrying it with the same message ID while the
// failure may have come after delivery. Failed tries are appended to
// attempts when it is not nil; the last error is returned.
func (n *Node) tryInstance(ctx context.Context, inst *Instance, method string, payload []byte, o *callOptions, id messageID, attempts *[]Attempt) ([]byte, error) {
	for same := 0; ; same++ {
		var start time.Time
		if attempts != nil {
			start = time.Now()
		}
		out, err := n.attempt(ctx, inst, method, payload, o, id, same)
		if err == nil {
			return out, nil
		}
		if attempts != nil {
			*attempts = append(*attempts, Attempt{InstanceID: inst.ID, Err: err, Duration: time.Since(start)})
		}
		if same >= n.cfg.SameInstanceRetries || !mayHaveBeenDelivered(ctx, err, inst.idempotent(method)) || !n.budget.withdraw() {
			return nil, err
		}
		n.stats.sameRetries.Add(1)
		n.met.sameRetries.Add(bg, 1)
		if !sleepCtx(ctx, jitter(n.cfg.SameInstanceBackoff, same)) {
			return nil, err
		}
	}
}

// mayHaveBeenDelivered reports whether err leaves open that the instance got
// the request (so a same-instance retry, answered by dedup, is the safe
// next step): a lost connection always; an attempt timeout only for
// non-idempotent methods, since an idempotent one is better moved to
// another instance than waited on again.
func mayHaveBeenDelivered(ctx context.Context, err error, idempotent bool) bool {
	if ctx.Err() != nil || errors.As(err, new(deadlineSpent)) || notDelivered(err) {
		return false
	}
	if errors.Is(err, rpc.ErrConnLost) {
		return true
	}
	return !idempotent && errors.Is(err, ErrTimeout)
}

// jitter returns a random duration in [0, base×2^n), capped at 100×base.
func jitter(base time.Duration, n int) time.Duration {
	ceiling := min(base<<min(n, 16), 100*base)
	if ceiling <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceiling)))
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// retryable reports whether err may succeed on another instance.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.As(err, new(deadlineSpent)) {
		return false // the caller's deadline is spent
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return re.Retryable || re.Code == CodeUnavailable
	}
	return errors.Is(err, ErrInstanceUnavailable) || errors.Is(err, ErrTimeout)
}

// backoff is a small jittered pause before retrying an instance that
// answered "try elsewhere" (it may be shedding load); a dead connection is
// retried at once.
func backoff(err error, try int) time.Duration {
	var re *RemoteError
	if !errors.As(err, &re) || !re.Retryable {
		return 0
	}
	return jitter(time.Millisecond, try)
}

// pick chooses an instance from the service's routing snapshot.
func (n *Node) pick(service, method string, o *callOptions) (Instance, error) {
	if n.state.Load() == stateStopped {
		return Instance{}, ErrShutdown
	}
	snap := n.reg.snaps.get(service)
	if snap == nil {
		return Instance{}, fmt.Errorf("%w: %q", ErrServiceNotFound, service)
	}
	inst, err := n.cfg.Balancer.Pick(RouteRequest{Service: service, Method: method, Key: o.key, Exclude: o.exclude}, snap.routable)
	if err != nil {
		if errors.Is(err, ErrNoHealthyInstances) {
			return Instance{}, fmt.Errorf("%w: service %q has %d instance(s), %d routable, %d excluded", ErrNoHealthyInstances, service, snap.known, len(snap.routable), len(o.exclude))
		}
		return Instance{}, err
	}
	return inst, nil
}

// retryBudget allows retries up to a ratio of calls plus a floor per
// second, like Finagle's RetryBudget: when every instance fails, failover
// adds at most about ratio×load instead of multiplying it.
type retryBudget struct {
	perCall  int64 // milli-tokens deposited per call
	capacity int64 // milli-tokens at most
	floor    int64 // retries always allowed per second
	tokens   atomic.Int64
	floorSec atomic.Int64
	floorN   atomic.Int64
}

func newRetryBudget(ratio float64, floorPerSec int) *retryBudget {
	b := &retryBudget{perCall: int64(ratio * 1000), floor: int64(floorPerSec)}
	// Bank at most ten seconds' worth of floor or 100 retries.
	b.capacity = max(100, 10*b.floor) * 1000
	return b
}

func (b *retryBudget) deposit() {
	if b.tokens.Add(b.perCall) > b.capacity {
		b.tokens.Store(b.capacity)
	}
}

func (b *retryBudget) withdraw() bool {
	for {
		t := b.tokens.Load()
		if t < 1000 {
			break
		}
		if b.tokens.CompareAndSwap(t, t-1000) {
			return true
		}
	}
	sec := time.Now().Unix()
	if old := b.floorSec.Load(); old != sec && b.floorSec.CompareAndSwap(old, sec) {
		b.floorN.Store(0)
	}
	return b.floorN.Add(1) <= b.floor
}

// observe feeds passive failure tracking: consecutive unavailable or
// timed-out attempts eject an instance from this node's routing pool.
func (n *Node) observe(inst *Instance, err error) {
	l := inst.load
	if l == nil || n.cfg.EjectAfterFailures <= 0 {
		return
	}
	failed := err != nil && (errors.Is(err, ErrInstanceUnavailable) || errors.Is(err, ErrTimeout))
	if !failed {
		// Any answer, even a handler error, shows the instance is alive.
		if l.consecFails.Swap(0) != 0 || l.ejections.Load() > 0 {
			n.reg.callSucceeded(instKey{inst.Service, inst.ID})
		}
		return
	}
	if l.consecFails.Add(1) >= int32(n.cfg.EjectAfterFailures) {
		n.reg.eject(instKey{inst.Service, inst.ID}, n.cfg.EjectBaseTime, n.cfg.EjectMaxTime)
	}
}
