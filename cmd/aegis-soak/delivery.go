//go:build unix

// This file holds the delivery check: from the calls' answers and the
// count service's per-process counters, how many handler runs happened,
// whether every acknowledged call carries a run of its own, and whether
// the runs no answer carries are explained by failover.
//
// The count service answers each run with the number of runs its instance
// has made since its process started (1, 2, 3, …), so within one process of
// an agent every run has its own number. It does not see message IDs, so
// runs cannot be matched to calls one by one; the check works per process
// and per instance:
//
//   - an acknowledged call carries one run (instance, process, number);
//     two calls carrying the same run mean that one of them never ran;
//   - a process ran at least as many handlers as the highest number it
//     answered with, and exactly as many as its final probe says (the last
//     process of each agent is probed at the end; the runs of a killed or
//     terminated process after its last answer are not seen);
//   - a run no acknowledged answer carries is a second run of some call
//     (every call is either acknowledged or counted as a caller error).
//     The library allows a call to run again only where the first run's
//     deduplication entry is not: on another instance (failover, hedging)
//     or on a new process of the same instance (the entry died with the old
//     one). So for each instance, those runs may not outnumber the calls
//     routed to it that were answered by another instance, failed, or were
//     in flight while a new process of it started.
//
// The namespace tests (tests/netns) go further with the same count
// service: its instances also write each run down with its message ID
// (aegis agent -runs-file), so internal/runlog counts runs per message ID
// instead of inferring them per instance. The soak keeps the inference:
// its memory stays flat over a long run, and its restarted processes have
// lost their dedup entries, so runs per instance are no fixed bound.

package main

import (
	"fmt"
	"slices"
	"time"
)

// countAnswer is the answer of the built-in count service.
type countAnswer struct {
	Instance string `json:"instance"`
	Node     string `json:"node"`
	Service  string `json:"service"`
	Count    int64  `json:"count"`
}

// callOutcome is what the check needs of one finished call.
type callOutcome struct {
	start, end time.Time
	err        string      // "" when the call was answered
	answer     countAnswer // when answered and the answer decoded
	badAnswer  string      // when answered but not a count answer: what it was
	picks      []string    // instance IDs routing picked for the call, in order
}

// processSpan is one process of an agent, as the check sees it.
type processSpan struct {
	started time.Time // just before the process was started
	runs    int64     // handler runs before the final probe; -1 when not probed
}

// lifeOf returns the index of the process of spans that gave an answer
// received at t: the last one started at or before t. A process answers
// only after it started, and the previous one has exited at least
// restartDelayMin before its successor starts, so answers in flight from
// it are read by then.
func lifeOf(spans []processSpan, t time.Time) int {
	i := 0
	for j, s := range spans {
		if !s.started.After(t) {
			i = j
		}
	}
	return i
}

// restartedWithin reports whether a process of spans other than the first
// started between from and to.
func restartedWithin(spans []processSpan, from, to time.Time) bool {
	for _, s := range spans[min(1, len(spans)):] {
		if s.started.After(from) && s.started.Before(to) {
			return true
		}
	}
	return false
}

// instanceDelivery is the check's account of one instance.
type instanceDelivery struct {
	id         string
	processes  int
	probed     int   // processes whose runs are known exactly
	runs       int64 // handler runs seen (exact for probed processes)
	acked      int   // acknowledged calls it answered
	extra      int64 // runs no acknowledged answer carries
	allowed    int   // calls that may have run on it without its answer being theirs
	probeShort int   // processes whose probe counted fewer runs than their answers showed
}

// delivery is the result of the check.
type delivery struct {
	calls, answered, failed int
	// Acknowledged calls whose answer is not a run of their own: not a
	// count answer of a known instance, from an instance routing never
	// picked for the call, or a run another call also carries.
	malformed, misrouted, shared int
	instances                    []instanceDelivery // by instance ID
	problems                     []string           // the first few, described
}

// maxProblems is how many problems a delivery describes.
const maxProblems = 5

func (d *delivery) problem(format string, args ...any) {
	if len(d.problems) < maxProblems {
		d.problems = append(d.problems, fmt.Sprintf(format, args...))
	}
}

// totals sums the per-instance figures.
func (d *delivery) totals() (runs, extra int64, allowed, processes, probed int) {
	for _, in := range d.instances {
		runs += in.runs
		extra += in.extra
		allowed += in.allowed
		processes += in.processes
		probed += in.probed
	}
	return
}

// notOwnRun counts acknowledged calls whose answer is not a run of their
// own (as far as the count service lets one tell: "never ran").
func (d *delivery) notOwnRun() int { return d.malformed + d.misrouted + d.shared }

// ok reports whether handler runs agree with acknowledged calls: every
// answer a run of its own call, no probe below the answers, and on every
// instance no more unanswered runs than calls allowed to run there again.
func (d *delivery) ok() bool {
	if d.notOwnRun() > 0 {
		return false
	}
	for _, in := range d.instances {
		if in.probeShort > 0 || in.extra > int64(in.allowed) {
			return false
		}
	}
	return true
}

// lifeTally is what the answers show of one process.
type lifeTally struct {
	seen     []uint64 // bit n: run n was acknowledged
	distinct int      // distinct run numbers acknowledged
	highest  int64    // highest run number acknowledged
}

// mark records run n and reports whether it was already recorded.
func (l *lifeTally) mark(n int64) (dup bool) {
	w, b := n/64, uint64(1)<<(n%64)
	for int64(len(l.seen)) <= w {
		l.seen = append(l.seen, 0)
	}
	if l.seen[w]&b != 0 {
		return true
	}
	l.seen[w] |= b
	l.distinct++
	l.highest = max(l.highest, n)
	return false
}

// tally accumulates the delivery check call by call, keeping a bit per
// acknowledged run rather than the calls. Not safe for concurrent use.
type tally struct {
	service string
	d       delivery
	lives   map[string][]*lifeTally // instance → its processes' tallies
	allowed map[string]int
	acked   map[string]int
}

func newTally(service string) *tally {
	return &tally{service: service, lives: map[string][]*lifeTally{}, allowed: map[string]int{}, acked: map[string]int{}}
}

// life returns the tally of process i of instance id.
func (t *tally) life(id string, i int) *lifeTally {
	ls := t.lives[id]
	for len(ls) <= i {
		ls = append(ls, &lifeTally{})
	}
	t.lives[id] = ls
	return ls[i]
}

// add checks one finished call. procs (by instance ID, in start order)
// must list every process started before the call ended.
func (t *tally) add(c callOutcome, procs map[string][]processSpan) {
	d := &t.d
	i := d.calls
	d.calls++
	if c.err != "" {
		d.failed++
		for _, p := range dedupe(c.picks) {
			t.allowed[p]++
		}
		return
	}
	d.answered++
	a := c.answer
	spans := procs[a.Instance]
	if c.badAnswer != "" || a.Service != t.service || a.Count <= 0 || len(spans) == 0 {
		d.malformed++
		d.problem("call %d was answered with %s, not a count answer of a known instance of %q", i, describeAnswer(c), t.service)
		return
	}
	if !slices.Contains(c.picks, a.Instance) {
		d.misrouted++
		d.problem("call %d was answered by %s (run %d), which routing never picked for it (picked %v)", i, a.Instance, a.Count, c.picks)
	}
	life := lifeOf(spans, c.end)
	if t.life(a.Instance, life).mark(a.Count) {
		d.shared++
		d.problem("call %d was answered with run %d of %s (process %d), which an earlier call's answer carried", i, a.Count, a.Instance, life+1)
	}
	t.acked[a.Instance]++
	for _, p := range dedupe(c.picks) {
		if p != a.Instance || restartedWithin(procs[p], c.start, c.end) {
			t.allowed[p]++
		}
	}
}

// result returns the check's account given every process (by instance
// ID, in start order) with the runs probed at the end, where known.
func (t *tally) result(procs map[string][]processSpan) *delivery {
	d := t.d
	d.problems = slices.Clone(d.problems)
	ids := make([]string, 0, len(procs))
	for id := range procs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		in := instanceDelivery{id: id, processes: len(procs[id]), acked: t.acked[id], allowed: t.allowed[id]}
		for life, s := range procs[id] {
			var lt lifeTally
			if ls := t.lives[id]; life < len(ls) {
				lt = *ls[life]
			}
			runs := lt.highest
			if s.runs >= 0 {
				in.probed++
				if s.runs < lt.highest {
					in.probeShort++
					d.problem("%s process %d: the final probe counted %d runs, but an answer carried run %d", id, life+1, s.runs, lt.highest)
				}
				runs = max(s.runs, lt.highest)
			}
			in.runs += runs
			in.extra += runs - int64(lt.distinct)
		}
		if in.extra > int64(in.allowed) {
			d.problem("%s: %d runs no answer carries, but only %d calls may have run there again", id, in.extra, in.allowed)
		}
		d.instances = append(d.instances, in)
	}
	return &d
}

// checkDelivery checks calls against the processes of each instance
// (procs, by instance ID, in start order, with the probed runs). service
// is the count service's name.
func checkDelivery(service string, calls []callOutcome, procs map[string][]processSpan) *delivery {
	t := newTally(service)
	for _, c := range calls {
		t.add(c, procs)
	}
	return t.result(procs)
}

// describeAnswer says what a malformed answer was.
func describeAnswer(c callOutcome) string {
	if c.badAnswer != "" {
		return fmt.Sprintf("%q", c.badAnswer)
	}
	return fmt.Sprintf("%+v", c.answer)
}

// dedupe returns ids without repeats, in order.
func dedupe(ids []string) []string {
	if len(ids) < 2 {
		return ids
	}
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}
