//go:build unix

// This file writes the soak's reports: the header, one report per period
// and the final report with the verdict.

package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

// maxErrorSamples is how many distinct error texts a report quotes.
const maxErrorSamples = 3

// header writes what the soak runs and with which settings.
func (s *soak) header() {
	o := s.o
	w := s.out
	fmt.Fprintf(w, "aegis-soak: %d agent processes serving the built-in count service; an in-process client node calls it with CallWithFailover at %g/s for %v\n",
		o.agents, o.rate, o.duration)
	fmt.Fprintf(w, "faults:   one agent at a time, chosen at random, every %v to %v (seed %d): kill -9 then restart under the same name (same or new ports, at random, after %v to %v); SIGSTOP for the heartbeat timeout + %v to %v, then SIGCONT; SIGTERM (graceful leave) then restart as after kill -9\n",
		o.faultEvery/2, o.faultEvery*3/2, o.seed, restartDelayMin, restartDelayMin+restartDelaySpread, stopExtraMin, stopExtraMin+stopExtraSpread)
	fmt.Fprintf(w, "settings: heartbeat interval %v, timeout %v, health check %v (agents and client); gossip local; secret key (calls over mutual TLS); client attempt timeout %v, call deadline %v; other settings default (hedging adaptive, 3 instances, 2 same-instance retries)\n",
		o.hbInterval, o.hbTimeout, o.healthCheck(), o.attemptTimeout, o.callTimeout)
	fmt.Fprintf(w, "machine:  %s, %d CPUs, GOMAXPROCS %d\n", runtime.Version(), runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Fprintf(w, "agents:   goroutines are not exposed by the agent (it serves no debug endpoint); RSS (VmRSS) and threads are read from /proc/PID/status\n")
}

// periodReport writes the report of the period [from, to), number n.
func (s *soak) periodReport(n int, from, to time.Time) {
	w := s.out
	fmt.Fprintf(w, "\n--- %s (period %d: %s to %s) ---\n", offset(s.loadStart, to), n, offset(s.loadStart, from), offset(s.loadStart, to))
	began := s.drv.started.Load()
	cs := summarize(s.drv.takePeriod())
	fmt.Fprintf(w, "calls     %d started; %d finished: %d answered, %d errors%s\n", began-s.reportedStarts, cs.calls, cs.calls-cs.errors, cs.errors, cs.sampleText())
	s.reportedStarts = began
	fmt.Fprintf(w, "latency   %s\n", cs.latencyText())
	_, d := s.drv.totals(s.spans(nil))
	runs, extra, _, _, _ := d.totals()
	fmt.Fprintf(w, "delivery  since the start: %d handler runs seen for %d acknowledged calls, %d runs no answer carries (lower bounds until the final probe), %d answers not a call's own run\n",
		runs, d.answered, extra, d.notOwnRun())
	s.mu.Lock()
	var faults []string
	for _, f := range s.faults {
		if !f.at.IsZero() && !f.at.Before(from) && f.at.Before(to) {
			faults = append(faults, s.describeFault(f))
		}
	}
	procs := []string{"client " + readProcStat(os.Getpid(), runtime.NumGoroutine()).String()}
	for _, p := range s.agents {
		procs = append(procs, fmt.Sprintf("%s %s", p.Name, readProcStat(p.PID, -1)))
	}
	s.mu.Unlock()
	if len(faults) == 0 {
		faults = []string{"none"}
	}
	fmt.Fprintf(w, "faults    %s\n", strings.Join(faults, "\n          "))
	fmt.Fprintf(w, "processes %s\n", strings.Join(procs, "; "))
}

// ending is what the soak gathered after the load.
type ending struct {
	probes        map[string]int64
	clientEnd     procStat
	clientAfter   int // goroutines right after the client's Shutdown
	clientSettled int // and a second later
	stats         aegis.Stats
	stops         map[*agentProc]stopResult
	interrupted   bool
}

// final writes the final report and returns the verdict.
func (s *soak) final(e ending) *result {
	total, d := s.drv.totals(s.spans(e.probes))
	w := s.out
	elapsed := s.loadEnd.Sub(s.loadStart)
	fmt.Fprintf(w, "\n=== final report: %v of load, seed %d ===\n", elapsed.Round(time.Millisecond), s.o.seed)
	cs := summarize(total)
	fmt.Fprintf(w, "calls      %d made: %d answered, %d caller errors%s\n", cs.calls, cs.calls-cs.errors, cs.errors, cs.sampleText())
	fmt.Fprintf(w, "latency    %s\n", cs.latencyText())

	runs, extra, allowed, processes, probed := d.totals()
	fmt.Fprintf(w, "delivery   %d handler runs (exact for the %d processes probed at the end, a lower bound for the other %d) for %d acknowledged calls\n",
		runs, probed, processes-probed, d.answered)
	fmt.Fprintf(w, "           calls answered with a run not their own (never ran, as far as the count service tells): %d (%d malformed, %d from an instance not picked for them, %d sharing a run)\n",
		d.notOwnRun(), d.malformed, d.misrouted, d.shared)
	fmt.Fprintf(w, "           runs no answer carries (second runs of calls): %d; allowed: %d (per instance, calls routed to it that another instance answered, that failed, or that were in flight across its restart)\n",
		extra, allowed)
	var per []string
	for _, in := range d.instances {
		per = append(per, fmt.Sprintf("%s: %s, %d runs, %d answers, %d extra (allowed %d)", in.id, plural(in.processes, "process", "processes"), in.runs, in.acked, in.extra, in.allowed))
	}
	fmt.Fprintf(w, "           %s\n", strings.Join(per, "\n           "))
	for _, p := range d.problems {
		fmt.Fprintf(w, "           PROBLEM: %s\n", p)
	}

	st := e.stats
	fmt.Fprintf(w, "client     hedges %d (won %d), same-instance retries %d; events about the service: %s\n",
		st.Hedges, st.HedgesWon, st.SameInstanceRetries, eventCounts(s.events.counts()))

	s.mu.Lock()
	faults := slices.Clone(s.faults)
	unrecovered := 0
	var lines []string
	for _, f := range faults {
		if f.failure != "" || !f.done {
			unrecovered++
		}
		lines = append(lines, s.describeFault(f))
	}
	s.mu.Unlock()
	kinds := map[faultKind]int{}
	for _, f := range faults {
		kinds[f.plan.kind]++
	}
	fmt.Fprintf(w, "faults     %d applied (%d kill -9, %d SIGSTOP, %d SIGTERM), %d not recovered from\n",
		len(faults), kinds[faultKill], kinds[faultStop], kinds[faultTerm], unrecovered)
	for _, l := range lines {
		fmt.Fprintf(w, "  %s\n", l)
	}

	fmt.Fprintf(w, "processes  at start and at end (agents: goroutines not exposed; RSS and threads from /proc/PID/status)\n")
	fmt.Fprintf(w, "  client  %s -> %s; after its Shutdown %d goroutines, a second later %d (what remains is the soak's own)\n",
		s.clientStart, e.clientEnd, e.clientAfter, e.clientSettled)
	s.mu.Lock()
	history := slices.Clone(s.history)
	s.mu.Unlock()
	for _, p := range history {
		how := p.endedBy
		if r, ok := e.stops[p]; ok {
			how += fmt.Sprintf(", exit status %d after %v", r.exitCode, r.took.Round(time.Millisecond))
			if !r.graceful {
				how += ", killed: did not exit in time"
			}
		}
		from := "start"
		if p.started.After(s.loadStart) {
			from = offset(s.loadStart, p.started)
		}
		fmt.Fprintf(w, "  %-3s pid %-7d %s to %s (%s): %s -> %s\n", p.Name, p.PID, from, offset(s.loadStart, p.ended), how, p.startStat, p.endStat)
	}

	s.logReport(history)

	res := &result{calls: cs.calls, errors: cs.errors, delivery: d, faults: len(faults), unrecovered: unrecovered, interrupted: e.interrupted}
	var bad []string
	if e.interrupted {
		bad = append(bad, "interrupted")
	}
	if cs.errors > 0 {
		bad = append(bad, fmt.Sprintf("%d caller errors", cs.errors))
	}
	if !d.ok() {
		bad = append(bad, "handler runs disagree with acknowledged calls (see PROBLEM)")
	}
	if unrecovered > 0 {
		bad = append(bad, fmt.Sprintf("%d faults not recovered from", unrecovered))
	}
	if len(bad) == 0 {
		res.pass = true
		res.verdict = fmt.Sprintf("PASS: %d calls, no caller error, every answer a run of its own call, %d extra runs within the %d failover allows, %d faults applied and recovered from",
			cs.calls, extra, allowed, len(faults))
	} else {
		res.verdict = "FAIL: " + strings.Join(bad, "; ")
	}
	fmt.Fprintf(w, "verdict: %s\n", res.verdict)
	return res
}

// logReport writes the warnings and errors the processes logged.
func (s *soak) logReport(history []*agentProc) {
	type key struct{ level, kind string }
	counts := map[key]int{}
	examples := map[key]string{}
	var order []key
	warns, errs := 0, 0
	for _, p := range history {
		wn, en, msgs := p.log.summary()
		warns, errs = warns+wn, errs+en
		for _, m := range msgs {
			k := key{m.level, m.kind}
			if _, ok := counts[k]; !ok {
				order = append(order, k)
				examples[k] = m.example
			}
			counts[k] += m.count
		}
	}
	cw, ce, cmsgs := s.clientLog.summary()
	fmt.Fprintf(s.out, "logs       agents: %d warnings, %d errors; client: %d warnings, %d errors (by message, numbers as N)\n", warns, errs, cw, ce)
	line := func(who, level, kind string, n int, ex string) {
		fmt.Fprintf(s.out, "  %-6s %-5s %4dx %s\n", who, level, n, kind)
		if ex != kind {
			fmt.Fprintf(s.out, "                      first: %s\n", clip(ex, 200))
		}
	}
	for _, k := range order {
		line("agents", k.level, k.kind, counts[k], examples[k])
	}
	for _, m := range cmsgs {
		line("client", m.level, m.kind, m.count, m.example)
	}
}

// describeFault describes one applied fault; s.mu is held.
func (s *soak) describeFault(f *faultRecord) string {
	var b strings.Builder
	at := f.at
	fmt.Fprintf(&b, "%s %s %s (pid %d)", offset(s.loadStart, at), f.plan.kind, f.name, f.pid)
	switch {
	case f.plan.kind == faultStop && !f.resumed.IsZero():
		fmt.Fprintf(&b, " for %v, then SIGCONT", f.resumed.Sub(at).Round(time.Millisecond))
	case f.plan.kind.restarts():
		if f.exitCode != -2 {
			fmt.Fprintf(&b, ": exited %s after %v", exitText(f.exitCode), f.exitAfter.Round(time.Millisecond))
		}
		if f.newPid != 0 {
			fmt.Fprintf(&b, "; restarted %v later on %s as pid %d", f.plan.hold.Round(time.Millisecond), f.ports, f.newPid)
		}
	}
	switch {
	case f.failure != "":
		fmt.Fprintf(&b, "; FAILED: %s", f.failure)
	case f.done:
		fmt.Fprintf(&b, "; routed to and answering %v after %s", f.recovered.Round(time.Millisecond),
			map[bool]string{true: "its start", false: "SIGCONT"}[f.plan.kind.restarts()])
	default:
		b.WriteString("; in progress")
	}
	end := time.Now()
	if f.done && !f.resumed.IsZero() {
		end = f.resumed.Add(f.recovered)
	}
	if evs := s.events.about(instanceID(f.name), at, end); len(evs) > 0 {
		var parts []string
		for _, e := range evs {
			parts = append(parts, fmt.Sprintf("%s +%.2fs", eventText(e), e.Time.Sub(at).Seconds()))
		}
		if len(parts) > 6 {
			parts = append(parts[:6], fmt.Sprintf("%d more", len(parts)-6))
		}
		fmt.Fprintf(&b, "; client saw: %s", strings.Join(parts, ", "))
	}
	return b.String()
}

// eventText is "unhealthy (node-failed)", "ejected", "deregistered (left)".
func eventText(e aegis.Event) string {
	what := e.Type.String()
	if e.Type == aegis.EventStatusChanged {
		what = e.NewStatus.String()
	}
	switch e.Reason {
	case "", "consecutive-failures", "ejection-expired":
		return what
	}
	return what + " (" + e.Reason + ")"
}

// eventCounts formats event counts, most frequent first.
func eventCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// exitText is "with status 0" or "by a signal".
func exitText(code int) string {
	if code < 0 {
		return "by a signal"
	}
	return fmt.Sprintf("with status %d", code)
}

// callSummary summarises finished calls.
type callSummary struct {
	calls, errors int
	p50, p99, max time.Duration
	samples       []string // the first few distinct error texts
}

// summarize sorts st's latencies (it owns them) and summarises st.
func summarize(st callStats) callSummary {
	slices.Sort(st.latencies)
	lat := st.latencies
	return callSummary{calls: st.calls, errors: st.errors, samples: st.samples,
		p50: percentile(lat, 0.50), p99: percentile(lat, 0.99), max: percentile(lat, 1)}
}

func (s callSummary) sampleText() string {
	if len(s.samples) == 0 {
		return ""
	}
	q := make([]string, len(s.samples))
	for i, m := range s.samples {
		q[i] = fmt.Sprintf("%q", clip(m, 300))
	}
	return "; first errors: " + strings.Join(q, ", ")
}

func (s callSummary) latencyText() string {
	if s.calls == 0 {
		return "no calls finished"
	}
	return fmt.Sprintf("p50 %s  p99 %s  max %s", msText(s.p50), msText(s.p99), msText(s.max))
}

// percentile returns the nearest-rank q-quantile (0 < q <= 1) of sorted,
// or 0 when it is empty.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// msText is a duration in milliseconds with three significant digits or
// more: "0.412ms", "12.3ms", "1503ms".
func msText(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 1:
		return fmt.Sprintf("%.3fms", ms)
	case ms < 10:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1fms", ms)
	}
	return fmt.Sprintf("%.0fms", ms)
}

// offset is t's time since start as m:ss.s ("-" for a zero t).
func offset(start, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(start)
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	d = d.Round(100 * time.Millisecond)
	m := int(d / time.Minute)
	sec := (d - time.Duration(m)*time.Minute).Seconds()
	return fmt.Sprintf("%s%d:%04.1f", sign, m, sec)
}

// clip shortens s to n bytes.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// plural is "1 process" or "3 processes".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
