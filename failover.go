package aegis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"
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

// Call calls method on one healthy instance of service picked by the
// Balancer, once. Errors: ErrServiceNotFound, ErrNoHealthyInstances,
// ErrInstanceUnavailable, ErrTimeout, ErrMessageTooLarge (all wrapped) or
// the handler's *RemoteError.
func (n *Node) Call(ctx context.Context, service, method string, payload []byte, opts ...CallOption) ([]byte, error) {
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	inst, err := n.pick(service, method, &o)
	if err != nil {
		return nil, err
	}
	id := o.messageID
	if id == "" {
		id = n.nextMessageID()
	}
	return n.attempt(ctx, &inst, method, payload, &o, id, 0)
}

// CallWithFailover calls method on a healthy instance of service and, when
// the attempt fails in a way another instance may not, tries another one:
// up to MaxAttempts distinct instances in all, each failed one added to the
// exclusion set.
//
// It retries when the instance was unavailable (connection refused or
// reset, instance gone or draining), did not answer within AttemptTimeout,
// or returned a *RemoteError marked Retryable. It never retries other
// handler errors, nor once ctx is done: every attempt runs inside the
// caller's deadline. Retries also stop when the retry budget is spent.
//
// A non-retryable failure of the first attempt is returned as is. Otherwise
// a failed call returns a *FailoverError listing every attempt; errors.Is and
// errors.As look through it (ErrNoHealthyInstances when candidates ran out).
func (n *Node) CallWithFailover(ctx context.Context, service, method string, payload []byte, opts ...CallOption) ([]byte, error) {
	o := callOptions{maxAttempts: n.cfg.MaxAttempts}
	for _, opt := range opts {
		opt(&o)
	}
	id := o.messageID
	if id == "" {
		id = n.nextMessageID()
	}
	n.budget.deposit()
	var fe *FailoverError
	for try := 0; try < o.maxAttempts; try++ {
		if try > 0 && !n.budget.withdraw() {
			fe.Err = ErrRetryBudgetExhausted
			break
		}
		inst, err := n.pick(service, method, &o)
		if err != nil {
			if fe == nil {
				return nil, err
			}
			fe.Err = err
			break
		}
		start := time.Now()
		out, err := n.attempt(ctx, &inst, method, payload, &o, id, try)
		if err == nil {
			return out, nil
		}
		if fe == nil {
			if !retryable(ctx, err) {
				return nil, err
			}
			fe = &FailoverError{Service: service}
			// Copy the caller's exclusions before adding to them.
			ex := make(map[string]struct{}, len(o.exclude)+o.maxAttempts)
			for k := range o.exclude {
				ex[k] = struct{}{}
			}
			o.exclude = ex
		}
		fe.Attempts = append(fe.Attempts, Attempt{InstanceID: inst.ID, Err: err, Duration: time.Since(start)})
		if !retryable(ctx, err) {
			break
		}
		o.exclude[inst.ID] = struct{}{}
		if wait := backoff(err, try); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				fe.Err = ctx.Err()
				return nil, fe
			case <-t.C:
			}
		}
	}
	return nil, fe
}

// retryable reports whether err may succeed on another instance.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
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
	ceiling := time.Millisecond << min(try, 4)
	return time.Duration(rand.Int64N(int64(ceiling)))
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
