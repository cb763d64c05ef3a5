//go:build unix

// This file holds the load driver: it starts CallWithFailover calls at a
// fixed rate (open loop) through the client node and keeps every outcome,
// together with the instances routing picked for each call, which a
// Balancer wrapping the client's RoundRobin records.

package main

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
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

// driver starts calls at a fixed rate and keeps what the reports need of
// their outcomes: latencies, error counts and texts, and the delivery
// tally, so that its memory grows by a few bytes per call, not by a
// record of each.
type driver struct {
	node        *aegis.Node
	picks       *pickLog
	service     string
	rate        float64
	callTimeout time.Duration
	// spans returns every agent process started so far, for the tally.
	spans func() map[string][]processSpan

	wg      sync.WaitGroup // calls in flight
	started atomic.Int64   // calls started

	mu         sync.Mutex // guards the fields below
	period     callStats  // calls finished since the last report
	total      callStats  // every finished call
	tally      *tally
	lastAnswer map[string]time.Time // instance → when it last answered a call
}

func newDriver(node *aegis.Node, picks *pickLog, service string, rate float64, callTimeout time.Duration, spans func() map[string][]processSpan) *driver {
	return &driver{node: node, picks: picks, service: service, rate: rate, callTimeout: callTimeout, spans: spans,
		tally: newTally(service), lastAnswer: map[string]time.Time{}}
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
				d.started.Add(1)
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
	// Every process that could have answered started before end, so it
	// is among the spans read now.
	spans := d.spans()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.period.add(end.Sub(start), out.err)
	d.total.add(end.Sub(start), out.err)
	d.tally.add(out, spans)
	if err == nil && out.answer.Instance != "" {
		d.lastAnswer[out.answer.Instance] = end
	}
}

// answeredSince reports whether instance answered a call that ended after t.
func (d *driver) answeredSince(instance string, t time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.lastAnswer[instance]
	return ok && at.After(t)
}

// takePeriod returns the calls finished since the last takePeriod and
// starts a new period.
func (d *driver) takePeriod() callStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.period
	d.period = callStats{}
	return p
}

// totals returns the statistics of every finished call and the delivery
// check given procs (with the final probes, when taken).
func (d *driver) totals(procs map[string][]processSpan) (callStats, *delivery) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.total
	t.latencies = slices.Clone(t.latencies)
	return t, d.tally.result(procs)
}

// callStats accumulates finished calls.
type callStats struct {
	calls, errors int
	latencies     []time.Duration
	samples       []string // the first few distinct error texts
}

// add counts one finished call; err is "" when it was answered.
func (s *callStats) add(latency time.Duration, err string) {
	s.calls++
	s.latencies = append(s.latencies, latency)
	if err != "" {
		s.errors++
		if len(s.samples) < maxErrorSamples && !slices.Contains(s.samples, err) {
			s.samples = append(s.samples, err)
		}
	}
}
