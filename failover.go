// This file holds Call and CallWithFailover: call options, the retry loop
// over instances and the same-instance retries.

package aegis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// CallOption adjusts one Call or CallWithFailover.
type CallOption func(*callOptions)

type callOptions struct {
	exclude     map[string]struct{}
	maxAttempts int
	key         string
	messageID   string
	header      map[string]string
	group       string
	resource    string
	onAttempt   func(Attempt) // WithAttemptObserver; nil: none
	hedge       bool          // the tries are a hedge's
	failover    bool          // the tries are on a second or later instance
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

// WithGroup sends the call to the active of one role group of the service
// (Service.Group); without it, a call to a service with several role groups
// goes to any group's active.
func WithGroup(group string) CallOption {
	return func(o *callOptions) { o.group = group }
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

// WithAttemptObserver calls fn after every try of the call, successful or
// not, with the instance, its node, the error (nil on success), the
// duration and whether it was a same-instance retry or a hedge: a tool can
// show how a call found its way. fn runs on the calling goroutine, or on
// a hedge's goroutine (concurrently with the call) when the call is
// hedged; it must be quick and safe for concurrent use.
func WithAttemptObserver(fn func(Attempt)) CallOption {
	return func(o *callOptions) { o.onAttempt = fn }
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
	if n.tracer != nil || n.met.callsOn(ctx) {
		return n.instrumented(ctx, "Call", service, method, payload, o, n.caller.call)
	}
	return n.caller.call(ctx, service, method, payload, &o)
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
// candidates ran out, ErrRetryBudgetExhausted when the budget stopped it).
func (n *Node) CallWithFailover(ctx context.Context, service, method string, payload []byte, opts ...CallOption) ([]byte, error) {
	o := applyOptions(callOptions{maxAttempts: n.cfg.MaxAttempts}, opts)
	if n.tracer != nil || n.met.callsOn(ctx) {
		return n.instrumented(ctx, "CallWithFailover", service, method, payload, o, n.caller.callWithFailover)
	}
	return n.caller.callWithFailover(ctx, service, method, payload, &o)
}

// call is Call after the options are applied.
func (c *caller) call(ctx context.Context, service, method string, payload []byte, o *callOptions) ([]byte, error) {
	id := c.messageIDFor(o)
	c.budget.Deposit()
	return c.callOwner(ctx, service, method, payload, o, id)
}

// callOwner calls the instance routing picks (the owner, WithResource),
// with same-instance retries only.
func (c *caller) callOwner(ctx context.Context, service, method string, payload []byte, o *callOptions, id messageID) ([]byte, error) {
	inst, err := c.pick(service, method, o)
	if err != nil {
		return nil, err
	}
	out, _, err := c.tryInstance(ctx, &inst, method, payload, o, id, nil)
	return out, err
}

// callWithFailover is CallWithFailover after the options are applied.
func (c *caller) callWithFailover(ctx context.Context, service, method string, payload []byte, o *callOptions) ([]byte, error) {
	id := c.messageIDFor(o)
	c.budget.Deposit()
	if o.resource != "" {
		// Only the owner may serve it: no other instance to move to.
		return c.callOwner(ctx, service, method, payload, o, id)
	}
	if snap := c.reg.snaps.get(service); snap != nil && snap.groups != nil {
		return c.callActive(ctx, service, method, payload, o, id)
	}
	var attempts []Attempt
	var stopErr error
	copied := false
	var prev *instLoad // the previous instance's, when there was one
	for distinct := 0; distinct < o.maxAttempts; distinct++ {
		// Moving a call off an instance this node has ejected is not a
		// retry storm but routing around a known failure: it costs no
		// budget, so that one hung instance does not turn the calls that
		// were waiting on it into errors once the budget is spent.
		if distinct > 0 && !ejected(prev) && !c.budget.Withdraw() {
			c.met.budgetRefused.Add(bg, 1, c.met.refusedFailover...)
			stopErr = ErrRetryBudgetExhausted
			break
		}
		o.failover = distinct > 0
		inst, err := c.pick(service, method, o)
		if err != nil {
			if len(attempts) == 0 {
				return nil, err
			}
			stopErr = err
			break
		}
		var out []byte
		var oc outcome
		var hedged *Instance
		if c.hedgeable(&inst, method, o) {
			out, oc, hedged, err = c.tryHedged(ctx, &inst, method, payload, o, id, &attempts)
		} else {
			out, oc, err = c.tryInstance(ctx, &inst, method, payload, o, id, &attempts)
		}
		if err == nil {
			return out, nil
		}
		prev = inst.load
		if ctx.Err() != nil || !oc.failover(inst.idempotent(method)) {
			break
		}
		copied = exclude(o, copied, &inst, hedged)
		if outcomeRules[oc].pause && !sleepCtx(ctx, jitter(time.Millisecond, distinct)) {
			stopErr = ctx.Err()
			break
		}
	}
	if len(attempts) == 1 && stopErr == nil {
		return nil, attempts[0].Err
	}
	return nil, &FailoverError{Service: service, Attempts: attempts, Err: stopErr}
}

// exclude adds the instances tried (hedged may be nil) to o's exclusion
// set, copying the caller's set first unless copied says that is done; it
// reports true.
func exclude(o *callOptions, copied bool, tried, hedged *Instance) bool {
	if !copied {
		ex := make(map[string]struct{}, len(o.exclude)+o.maxAttempts)
		for k := range o.exclude {
			ex[k] = struct{}{}
		}
		o.exclude = ex
	}
	o.exclude[tried.ID] = struct{}{}
	if hedged != nil {
		o.exclude[hedged.ID] = struct{}{}
	}
	return true
}

// tryInstance calls inst, retrying it with the same message ID while the
// outcome allows (see outcomeRule), up to SameInstanceRetries times and
// within the retry budget. Failed tries are appended to attempts when it
// is not nil; the last outcome and error are returned.
func (c *caller) tryInstance(ctx context.Context, inst *Instance, method string, payload []byte, o *callOptions, id messageID, attempts *[]Attempt) ([]byte, outcome, error) {
	return c.tryInstanceFrom(ctx, inst, method, payload, o, id, attempts, 0)
}

// tryInstanceFrom is tryInstance from try number same on (the tries
// before it already made, and retrying allowed by retryAgain).
func (c *caller) tryInstanceFrom(ctx context.Context, inst *Instance, method string, payload []byte, o *callOptions, id messageID, attempts *[]Attempt, same int) ([]byte, outcome, error) {
	for ; ; same++ {
		var start time.Time
		if attempts != nil {
			start = time.Now()
		}
		out, oc, err := c.attempt(ctx, inst, method, payload, o, id, same)
		if err == nil {
			return out, oc, nil
		}
		if attempts != nil {
			*attempts = append(*attempts, Attempt{InstanceID: inst.ID, Node: inst.Node, Err: err, Duration: time.Since(start), Try: same, Hedge: o.hedge})
		}
		if !c.retryAgain(ctx, inst, method, oc, same) {
			return nil, oc, err
		}
	}
}

// retryAgain decides whether try number same, which ended in oc, is
// followed by a retry on the same instance, and if so takes a retry
// budget token and waits the backoff (false if ctx ends meanwhile).
func (c *caller) retryAgain(ctx context.Context, inst *Instance, method string, oc outcome, same int) bool {
	if same >= c.cfg.SameInstanceRetries || ctx.Err() != nil || !oc.retrySame(inst.idempotent(method)) {
		return false
	}
	if !c.budget.Withdraw() {
		c.met.budgetRefused.Add(bg, 1, c.met.refusedRetry...)
		return false
	}
	c.stats.sameRetries.Add(1)
	c.met.sameRetries.Add(bg, 1)
	return sleepCtx(ctx, jitter(c.cfg.SameInstanceBackoff, same))
}

// jitter returns a random duration in [0, base×2^n), capped at 100×base.
func jitter(base time.Duration, n int) time.Duration {
	ceiling := min(base<<min(n, 16), 100*base)
	if ceiling <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceiling)))
}

// sleepCtx waits d or until ctx ends; it reports whether d passed. A call's
// pauses run inside the caller's context, whose deadline is wall-clock, so
// they wait on the wall clock.
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

// callActive is CallWithFailover for a service with role groups: calls go
// to the active only. When the active fails in a way that allows failover,
// the call waits, within ctx, for the group to change (a promotion, or the
// active answering again): it never calls a standby. Moving to a newly
// promoted active costs no retry budget; trying the same active again
// does, after a pause that doubles up to RoleLeaseTimeout. Without a
// deadline in ctx, waiting is bounded by 2 × (HeartbeatTimeout +
// RoleLeaseTimeout), enough for a promotion after a heartbeat timeout.
func (c *caller) callActive(ctx context.Context, service, method string, payload []byte, o *callOptions, id messageID) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*(c.cfg.HeartbeatTimeout+c.cfg.RoleLeaseTimeout))
		defer cancel()
	}
	var attempts []Attempt
	var failed *Instance // the active whose attempt failed last
	var retryAt time.Time
	pause := 10 * time.Millisecond
	for {
		inst, err := c.pick(service, method, o)
		if err != nil && !errors.Is(err, ErrNoActive) {
			return nil, activeErr(service, attempts, err)
		}
		ready := err == nil
		if ready && failed != nil && inst.ID == failed.ID && inst.Epoch == failed.Epoch {
			// The same active again: only after the pause, within budget.
			ready = !time.Now().Before(retryAt) && c.budget.Withdraw()
			if !ready && !time.Now().Before(retryAt) {
				retryAt = time.Now().Add(pause)
			}
		}
		if !ready {
			if !sleepCtx(ctx, 5*time.Millisecond) {
				if err == nil {
					err = ctx.Err()
				}
				return nil, activeErr(service, attempts, err)
			}
			continue
		}
		out, oc, err := c.tryActive(ctx, &inst, method, payload, o, id, &attempts)
		if err == nil {
			return out, nil
		}
		if ctx.Err() != nil || !oc.failover(inst.idempotent(method)) {
			return nil, activeErr(service, attempts, nil)
		}
		if failed != nil && (inst.ID != failed.ID || inst.Epoch != failed.Epoch) {
			// A new active (one just promoted may not have its lease
			// yet): short pauses again.
			pause = 10 * time.Millisecond
		}
		failed, retryAt = &inst, time.Now().Add(pause)
		pause = min(2*pause, c.cfg.RoleLeaseTimeout)
	}
}

// activeErr is callActive's error: the single attempt's own error, or a
// *FailoverError listing every attempt with why it stopped.
func activeErr(service string, attempts []Attempt, stop error) error {
	if len(attempts) == 0 && stop != nil {
		return stop
	}
	if len(attempts) == 1 && stop == nil {
		return attempts[0].Err
	}
	return &FailoverError{Service: service, Attempts: attempts, Err: stop}
}

// activeWatchAfter is how long an attempt to a role group's active runs
// before the caller starts watching for a promotion (see tryActive).
const activeWatchAfter = 50 * time.Millisecond

// tryActive is tryInstance for a role group's active. For an idempotent
// method, an attempt still unanswered when another instance becomes the
// group's active (or the same one at a new epoch) is given up as timed
// out, so that callers move to the new active at once instead of waiting
// out AttemptTimeout on one that vanished (a stopped process, a black
// hole). A non-idempotent call stays with its attempt.
func (c *caller) tryActive(ctx context.Context, inst *Instance, method string, payload []byte, o *callOptions, id messageID, attempts *[]Attempt) ([]byte, outcome, error) {
	if !inst.idempotent(method) {
		return c.tryInstance(ctx, inst, method, payload, o, id, attempts)
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	var superseded atomic.Bool
	watch := time.AfterFunc(activeWatchAfter, func() {
		for {
			if cur, err := c.pick(inst.Service, "", o); err == nil && (cur.ID != inst.ID || cur.Epoch != inst.Epoch) {
				superseded.Store(true)
				cancel()
				return
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	defer watch.Stop()
	out, oc, err := c.tryInstance(actx, inst, method, payload, o, id, attempts)
	if err != nil && superseded.Load() && ctx.Err() == nil {
		return nil, outcomeAttemptTimeout, fmt.Errorf("%w: %s/%s is no longer the active of its group", ErrTimeout, inst.Service, inst.ID)
	}
	return out, oc, err
}
