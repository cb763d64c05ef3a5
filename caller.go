// This file holds the caller: the part of a Node that makes outgoing calls
// (pick an instance, make one attempt, feed passive ejection).

package aegis

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/aegisipc/aegis/internal/budget"
	"github.com/aegisipc/aegis/internal/rpc"
)

// caller makes a Node's outgoing calls. It shares the registry (routing
// snapshots, ejection) with the Node and owns the call client, the retry
// budget and the message sequence. Safe for concurrent use; it takes no
// lock of its own.
type caller struct {
	cfg     *Config // the Node's; read only
	reg     *registry
	client  *rpc.Client
	budget  *budget.Budget
	stats   *nodeStats
	met     *nodeMetrics
	tracer  trace.Tracer // nil: tracing off
	prop    propagation.TextMapPropagator
	stopped func() bool            // the node has shut down
	alive   func(node string) bool // pings a member; nil in tests that build a caller alone
	spawn   func(func()) bool      // Node.spawn: a goroutine Shutdown waits for

	msgPrefix string
	msgSeq    atomic.Uint64

	latencies sync.Map  // service → *latency, for hedge delays
	hedges    sync.Pool // *hedge
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
func (c *caller) messageIDFor(o *callOptions) messageID {
	if o.messageID != "" {
		return messageID{prefix: o.messageID}
	}
	return messageID{prefix: c.msgPrefix, seq: c.msgSeq.Add(1)}
}

// pick chooses an instance from the service's routing snapshot.
func (c *caller) pick(service, method string, o *callOptions) (Instance, error) {
	if c.stopped() {
		return Instance{}, ErrShutdown
	}
	if o.resource != "" {
		return c.reg.owner(service, o.resource)
	}
	snap := c.reg.snaps.get(service)
	if snap == nil {
		return Instance{}, fmt.Errorf("%w: %q", ErrServiceNotFound, service)
	}
	pool := snap.routable
	if o.group != "" || snap.groups != nil && len(pool) == 0 {
		var err error
		if pool, err = groupPool(service, o.group, snap); err != nil {
			return Instance{}, err
		}
	}
	inst, err := c.cfg.Balancer.Pick(RouteRequest{Service: service, Method: method, Key: o.key, Exclude: o.exclude}, pool)
	if err != nil {
		if errors.Is(err, ErrNoHealthyInstances) {
			return Instance{}, fmt.Errorf("%w: service %q has %d instance(s), %d routable, %d excluded", ErrNoHealthyInstances, service, snap.known, len(snap.routable), len(o.exclude))
		}
		return Instance{}, err
	}
	return inst, nil
}

// groupPool returns the active of service's role group (any group when
// group is ""), or why there is none.
func groupPool(service, group string, snap *serviceSnapshot) ([]Instance, error) {
	if group == "" {
		return nil, fmt.Errorf("%w: %w: no role group of service %q has an active instance (%d instance(s) known)",
			ErrNoActive, ErrNoHealthyInstances, service, snap.known)
	}
	pool, ok := snap.groups[group]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: service %q has no role group %q", ErrServiceNotFound, service, group)
	case len(pool) == 0:
		return nil, fmt.Errorf("%w: %w: role group %s/%s has no active instance", ErrNoActive, ErrNoHealthyInstances, service, group)
	}
	return pool, nil
}

// attempt makes one call to inst and classifies its result once (see
// classify.go). try counts the tries on this instance, from 0.
func (c *caller) attempt(ctx context.Context, inst *Instance, method string, payload []byte, o *callOptions, msgID messageID, try int) ([]byte, outcome, error) {
	if inst.load != nil {
		inst.load.inflight.Add(1)
		defer inst.load.inflight.Add(-1)
	}
	var start time.Time
	if o.onAttempt != nil {
		start = time.Now()
	}
	header := o.header
	var span trace.Span
	if c.tracer != nil {
		ctx, span, header = c.startAttemptSpan(ctx, inst, o, try)
	}
	timeout := c.cfg.AttemptTimeout
	req := rpc.Request{Service: inst.Service, Method: method, InstanceID: inst.ID, MessageID: msgID.prefix, MessageSeq: msgID.seq,
		Header: header, Payload: payload, Attempt: uint32(try), Timeout: timeout, Epoch: inst.Epoch}
	// Whether the handler's deadline will be the caller's rather than the
	// attempt timeout (only a deadline context costs a clock read; context
	// deadlines are wall-clock).
	callerBound := false
	if dl, ok := ctx.Deadline(); ok {
		callerBound = time.Until(dl) <= timeout
	}
	resp, err := c.client.Call(ctx, inst.Addr, &req)
	var o2 outcome
	switch {
	case err != nil:
		o2, err = classifyTransport(ctx, inst, err, timeout)
	case resp.Err != nil:
		o2, err = classifyRemote(inst, resp.Err, callerBound, timeout)
	}
	c.observe(inst, o2)
	c.met.recordAttempt(ctx, inst, o, try, o2)
	if span != nil {
		endAttemptSpan(span, o2, err)
	}
	if o.onAttempt != nil {
		o.onAttempt(Attempt{InstanceID: inst.ID, Node: inst.Node, Err: err, Duration: time.Since(start), Try: try, Hedge: o.hedge})
	}
	if err != nil {
		return nil, o2, err
	}
	return resp.Payload, outcomeOK, nil
}

// observe feeds passive failure tracking: consecutive attempts that found
// the instance failing eject it from this node's routing pool; any answer
// clears the count.
func (c *caller) observe(inst *Instance, o outcome) {
	l := inst.load
	if l == nil || c.cfg.EjectAfterFailures <= 0 {
		return
	}
	switch outcomeRules[o].live {
	case alive:
		if l.consecFails.Swap(0) != 0 || l.ejections.Load() > 0 {
			c.reg.callSucceeded(instKey{inst.Service, inst.ID}, l)
		}
	case failing:
		if l.consecFails.Add(1) >= int32(c.cfg.EjectAfterFailures) {
			c.reg.eject(instKey{inst.Service, inst.ID}, l, c.cfg.EjectBaseTime, c.cfg.EjectMaxTime)
		}
	}
}
