//go:build unix

// This file holds the load driver: it starts CallWithFailover calls at a
// fixed rate (open loop) through the client node and keeps every outcome,
// together with the instances routing picked for each call, which a
// Balancer wrapping the client's RoundRobin records.

package main

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/aegisipc/aegis"
)

// countMethod is the method every soak call invokes; any method but whoami
// runs the count handler.
const countMethod = "count"

// pickLog records, per call in flight, the instances routing picks for
// it. Calls are told apart by their routing key (aegis.WithKey), which
// RoundRobin ignores. Safe for concurrent use.
type pickLog struct {
	calls sync.Map // routing key → *callRecord
}

// recordingBalancer is a Balancer that picks like inner and notes each
// pick in log.
type recordingBalancer struct {
	inner aegis.Balancer
	log   *pickLog
}

var _ aegis.Balancer = (*recordingBalancer)(nil)

// Pick picks with the inner Balancer. It does not block: the note takes
// only the call's own lock.
func (b *recordingBalancer) Pick(req aegis.RouteRequest, healthy []aegis.Instance) (aegis.Instance, error) {
	inst, err := b.inner.Pick(req, healthy)
	if err == nil && req.Key != "" {
		if v, ok := b.log.calls.Load(req.Key); ok {
			v.(*callRecord).addPick(inst.ID)
		}
	}
	return inst, err
}

// callRecord is one call as it goes.
type callRecord struct {
	mu  sync.Mutex // guards out.picks while the call is in flight
	out callOutcome
}

func (r *callRecord) addPick(id string) {
	r.mu.Lock()
	r.out.picks = append(r.out.picks, id)
	r.mu.Unlock()
}

// driver starts calls at a fixed rate and keeps their outcomes.
type driver struct {
	node        *aegis.Node
	picks       *pickLog
	service     string
	rate        float64
	callTimeout time.Duration

	wg sync.WaitGroup // calls in flight

	mu         sync.Mutex  // guards the fields below
	started    []time.Time // start of every call, in order
	done       []callOutcome
	lastAnswer map[string]time.Time // instance → when it last answered a call
}

func newDriver(node *aegis.Node, picks *pickLog, service string, rate float64, callTimeout time.Duration) *driver {
	return &driver{node: node, picks: picks, service: service, rate: rate, callTimeout: callTimeout, lastAnswer: map[string]time.Time{}}
}

// run starts calls at d.rate from now until stop is closed, then waits for
// the calls in flight.
func (d *driver) run(stop <-chan struct{}) {
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var n int64
	for {
		select {
		case <-stop:
			d.wg.Wait()
			return
		case now := <-tick.C:
			for due := int64(now.Sub(start).Seconds() * d.rate); n < due; n++ {
				d.wg.Add(1)
				go d.call(n)
			}
		}
	}
}

// call makes call number i.
func (d *driver) call(i int64) {
	defer d.wg.Done()
	key := "c" + strconv.FormatInt(i, 36)
	r := &callRecord{}
	d.picks.calls.Store(key, r)
	ctx, cancel := context.WithTimeout(context.Background(), d.callTimeout)
	defer cancel()
	start := time.Now()
	d.mu.Lock()
	d.started = append(d.started, start)
	d.mu.Unlock()
	answer, err := d.node.CallWithFailover(ctx, d.service, countMethod, nil, aegis.WithKey(key))
	end := time.Now()
	d.picks.calls.Delete(key)

	r.mu.Lock()
	out := r.out
	r.mu.Unlock()
	out.start, out.end = start, end
	if err != nil {
		out.err = err.Error()
	} else if json.Unmarshal(answer, &out.answer) != nil {
		out.badAnswer = string(answer)
	}
	d.mu.Lock()
	d.done = append(d.done, out)
	if err == nil && out.answer.Instance != "" {
		d.lastAnswer[out.answer.Instance] = end
	}
	d.mu.Unlock()
}

// answeredSince reports whether instance answered a call that ended after t.
func (d *driver) answeredSince(instance string, t time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.lastAnswer[instance]
	return ok && at.After(t)
}

// snapshot returns the start times of the calls started so far and the
// outcomes of those finished, as copies.
func (d *driver) snapshot() (started []time.Time, done []callOutcome) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.started...), append([]callOutcome(nil), d.done...)
}
