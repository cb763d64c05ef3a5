package runlog

import (
	"fmt"
	"slices"
)

// Bounds are what a check holds the runs of each message ID to.
type Bounds struct {
	// NonIdempotent reports whether a method is non-idempotent: a call to
	// it may run at most once in all, and exactly once when acknowledged.
	NonIdempotent func(method string) bool
	// MaxRuns bounds the runs of a call to an idempotent method in all
	// (0: no bound).
	MaxRuns int
	// PerInstance bounds its runs on one instance (0: no bound); 1 where
	// the instances' deduplication holds for the whole test.
	PerInstance int
}

// maxProblems is how many problems a Report describes.
const maxProblems = 8

// Report is the outcome of Check.
type Report struct {
	Calls, Acked, Failed int
	Runs                 int // runs in all
	Repeated             int // message IDs that ran more than once
	MostRuns             int // the most runs one message ID had
	// Violations counts every broken rule; Problems describes the first
	// few.
	Violations int
	Problems   []string
}

// OK reports whether no rule was broken.
func (r *Report) OK() bool { return r.Violations == 0 }

func (r *Report) problem(format string, args ...any) {
	r.Violations++
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

func (r *Report) String() string {
	return fmt.Sprintf("%d calls (%d acknowledged, %d failed), %d handler runs, %d message IDs run more than once (at most %d times), %d violations",
		r.Calls, r.Acked, r.Failed, r.Runs, r.Repeated, r.MostRuns, r.Violations)
}

// runKey names one run: the answer of an acknowledged call must name a run
// of its own message ID.
type runKey struct {
	instance, messageID string
	run                 int64
}

// Check checks calls against runs, message ID by message ID:
//   - every call has a message ID of its own;
//   - every run is of a call's message ID and method;
//   - an acknowledged call's answer names a run of its own message ID on
//     the instance that answered (so it ran at least once, and its answer
//     is no other call's);
//   - a call to a non-idempotent method ran at most once, and exactly once
//     when acknowledged;
//   - a call to an idempotent method ran at most b.MaxRuns times, and at
//     most b.PerInstance times on one instance.
func Check(calls []Call, runs []Run, b Bounds) *Report {
	r := &Report{Calls: len(calls), Runs: len(runs)}
	byID := make(map[string]int, len(calls)) // message ID → index in calls
	for i, c := range calls {
		if _, dup := byID[c.MessageID]; dup || c.MessageID == "" {
			r.problem("call %d has message ID %q, which is empty or another call's", i, c.MessageID)
			continue
		}
		byID[c.MessageID] = i
	}
	ran := make(map[runKey]bool, len(runs))
	perID := make(map[string]map[string]int, len(calls)) // message ID → instance → runs
	for _, run := range runs {
		i, ok := byID[run.MessageID]
		if !ok {
			r.problem("%s ran message ID %q (run %d), which no call had", run.Instance, run.MessageID, run.Run)
			continue
		}
		if m := calls[i].Method; run.Method != m {
			r.problem("%s ran message ID %q as method %q, but the call was to %q", run.Instance, run.MessageID, run.Method, m)
		}
		ran[runKey{run.Instance, run.MessageID, run.Run}] = true
		if perID[run.MessageID] == nil {
			perID[run.MessageID] = map[string]int{}
		}
		perID[run.MessageID][run.Instance]++
	}
	for _, c := range calls {
		r.checkCall(c, perID[c.MessageID], ran, b)
	}
	return r
}

// checkCall checks one call given its runs per instance.
func (r *Report) checkCall(c Call, on map[string]int, ran map[runKey]bool, b Bounds) {
	total := 0
	for _, n := range on {
		total += n
	}
	r.MostRuns = max(r.MostRuns, total)
	if total > 1 {
		r.Repeated++
	}
	if c.Err == "" {
		r.Acked++
		if !ran[runKey{c.Instance, c.MessageID, c.Run}] {
			r.problem("call %s (%s) was acknowledged with run %d of %q, which is no run of its message ID (its runs: %v)", c.MessageID, c.Method, c.Run, c.Instance, on)
		}
	} else {
		r.Failed++
	}
	switch {
	case b.NonIdempotent != nil && b.NonIdempotent(c.Method):
		if total > 1 {
			r.problem("non-idempotent call %s (%s) ran %d times: %v", c.MessageID, c.Method, total, on)
		}
	case b.MaxRuns > 0 && total > b.MaxRuns:
		r.problem("call %s (%s) ran %d times, more than the %d allowed: %v", c.MessageID, c.Method, total, b.MaxRuns, on)
	case b.PerInstance > 0:
		for _, inst := range sortedKeys(on) {
			if on[inst] > b.PerInstance {
				r.problem("call %s (%s) ran %d times on %s, more than the %d allowed on one instance", c.MessageID, c.Method, on[inst], inst, b.PerInstance)
			}
		}
	}
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
