// This file holds hedged attempts: when an instance has not answered an
// idempotent call within a delay learned from the service's latency,
// CallWithFailover sends the same request to another instance and takes
// the first answer, so a hung instance costs callers that delay, not a
// whole AttemptTimeout.

package aegis

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Hedge delay bounds when Config.HedgeDelay is 0 (adaptive): four times the
// service's average answer time, at least minHedgeDelay, at most half the
// attempt timeout; firstHedgeDelay before any answer was measured.
const (
	minHedgeDelay   = 50 * time.Millisecond
	firstHedgeDelay = 100 * time.Millisecond
	hedgeFactor     = 4
)

// latency is a service's moving average answer time (ns), α = 1/16.
type latency struct{ avg atomic.Int64 }

func (l *latency) observe(d time.Duration) {
	old := l.avg.Load()
	if old == 0 {
		l.avg.Store(int64(d))
		return
	}
	l.avg.Store(old + (int64(d)-old)/16)
}

// hedgeDelay returns how long an idempotent attempt to service may go
// unanswered before it is hedged, and the service's latency tracker.
func (c *caller) hedgeDelay(service string) (time.Duration, *latency) {
	v, ok := c.latencies.Load(service)
	if !ok {
		v, _ = c.latencies.LoadOrStore(service, &latency{})
	}
	l := v.(*latency)
	if d := c.cfg.HedgeDelay; d > 0 {
		return d, l
	}
	avg := time.Duration(l.avg.Load())
	if avg == 0 {
		return min(firstHedgeDelay, c.cfg.AttemptTimeout/2), l
	}
	return min(max(hedgeFactor*avg, minHedgeDelay), c.cfg.AttemptTimeout/2), l
}

// hedgeable reports whether an attempt to inst may be hedged: hedging is
// on, the method is idempotent, and another instance could take it.
func (c *caller) hedgeable(inst *Instance, method string, o *callOptions) bool {
	if c.cfg.HedgeDelay < 0 || !inst.idempotent(method) {
		return false
	}
	snap := c.reg.snaps.get(inst.Service)
	return snap != nil && len(snap.routable)-len(o.exclude) >= 2
}

// hedge is one hedged attempt's shared state; pooled with its timer.
type hedge struct {
	c     *caller
	timer *time.Timer // runs fire; stopped while pooled
	wg    sync.WaitGroup
	done  chan hedgeResult // capacity 1

	// set for one use, read by fire
	ctx     context.Context
	cancel  context.CancelFunc
	primary Instance // copies, not pointers: the caller's stay on its stack
	method  string
	payload []byte
	o       callOptions
	id      messageID

	launched bool // set by fire before wg.Done
}

type hedgeResult struct {
	inst     Instance
	out      []byte
	oc       outcome
	err      error
	attempts []Attempt
}

func (c *caller) getHedge() *hedge {
	if h, ok := c.hedges.Get().(*hedge); ok {
		return h
	}
	h := &hedge{c: c, done: make(chan hedgeResult, 1)}
	h.timer = time.AfterFunc(time.Hour, h.fire)
	h.timer.Stop()
	return h
}

// tryHedged is tryInstance with a hedge: if inst has not answered its first
// try within the service's hedge delay, the same request (same message ID)
// goes to another instance too, within the retry budget, and the first
// answer wins; the other attempt is cancelled. Once the first try has
// answered in time (even with a failure), the same-instance retries of
// tryInstance follow without a hedge. An instance that loses the race is
// suspected (see suspect). When a hedge ran and both
// attempts failed, hedged is the second instance tried, for the caller to
// exclude as well.
func (c *caller) tryHedged(ctx context.Context, inst *Instance, method string, payload []byte, o *callOptions, id messageID, attempts *[]Attempt) (out []byte, oc outcome, hedged *Instance, err error) {
	delay, lat := c.hedgeDelay(inst.Service)
	h := c.getHedge()
	hctx, cancel := context.WithCancel(ctx)
	h.ctx, h.cancel, h.primary, h.method, h.payload, h.o, h.id, h.launched = hctx, cancel, *inst, method, payload, *o, id, false
	h.wg.Add(1)
	h.timer.Reset(delay)
	start := time.Now()
	out, oc, err = c.attempt(hctx, inst, method, payload, o, id, 0)
	if h.timer.Stop() {
		h.wg.Done() // fire never ran
	}
	h.wg.Wait()
	if !h.launched {
		cancel()
		c.putHedge(h)
		if err == nil {
			lat.observe(time.Since(start))
			return out, oc, nil, nil
		}
		if attempts != nil {
			*attempts = append(*attempts, Attempt{InstanceID: inst.ID, Node: inst.Node, Err: err, Duration: time.Since(start)})
		}
		if !c.retryAgain(ctx, inst, method, oc, 0) {
			return nil, oc, nil, err
		}
		out, oc, err = c.tryInstanceFrom(ctx, inst, method, payload, o, id, attempts, 1)
		return out, oc, nil, err
	}
	if err != nil && attempts != nil {
		*attempts = append(*attempts, Attempt{InstanceID: inst.ID, Node: inst.Node, Err: err, Duration: time.Since(start)})
	}
	if err == nil {
		cancel() // the hedge loses
		<-h.done
		lat.observe(time.Since(start))
		c.putHedge(h)
		return out, oc, nil, nil
	}
	r := <-h.done
	cancel()
	c.putHedge(h)
	if attempts != nil {
		*attempts = append(*attempts, r.attempts...)
	}
	if r.err == nil {
		c.stats.hedgesWon.Add(1)
		c.suspect(inst)
		return r.out, outcomeOK, &r.inst, nil
	}
	return out, oc, &r.inst, err
}

// suspect follows up an instance that lost a hedge race. Losing a race is
// no verdict (packet loss, a slow network or one slow call do that to
// healthy instances), so its node is pinged, one ping at a time per
// instance, on a goroutine the node counts (Shutdown waits for it); a node that does not answer (stopped,
// paused, black-holed) counts as one failure toward ejection.
func (c *caller) suspect(inst *Instance) {
	l := inst.load
	if l == nil || c.alive == nil || !l.probing.CompareAndSwap(false, true) {
		return
	}
	node, cp := inst.Node, *inst
	if !c.spawn(func() {
		defer l.probing.Store(false)
		if !c.alive(node) {
			c.observe(&cp, outcomeAttemptTimeout)
		}
	}) {
		l.probing.Store(false)
	}
}

func (c *caller) putHedge(h *hedge) {
	h.ctx, h.cancel, h.primary, h.payload, h.o = nil, nil, Instance{}, nil, callOptions{}
	c.hedges.Put(h)
}

// fire runs when the primary attempt has not answered within the delay:
// it picks another instance and runs the hedge attempt on it.
func (h *hedge) fire() {
	c := h.c
	if h.ctx.Err() != nil {
		h.wg.Done()
		return
	}
	if !c.budget.Withdraw() {
		c.met.budgetRefused.Add(bg, 1, c.met.refusedHdg...)
		h.wg.Done()
		return
	}
	ex := make(map[string]struct{}, len(h.o.exclude)+1)
	for k := range h.o.exclude {
		ex[k] = struct{}{}
	}
	ex[h.primary.ID] = struct{}{}
	o := callOptions{exclude: ex, key: h.o.key, header: h.o.header, onAttempt: h.o.onAttempt, hedge: true}
	inst, err := c.pick(h.primary.Service, h.method, &o)
	if err != nil {
		h.wg.Done()
		return
	}
	h.launched = true
	c.stats.hedges.Add(1)
	c.met.hedges.Add(bg, 1)
	ctx, cancel, method, payload, id := h.ctx, h.cancel, h.method, h.payload, h.id
	h.wg.Done() // from here on only the locals above and h.done are used
	var attempts []Attempt
	out, oc, err := c.tryInstance(ctx, &inst, method, payload, &o, id, &attempts)
	if err == nil {
		cancel() // the primary loses
	}
	h.done <- hedgeResult{inst: inst, out: out, oc: oc, err: err, attempts: attempts}
}
