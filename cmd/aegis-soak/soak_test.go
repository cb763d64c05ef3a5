//go:build unix

// This file tests the soak: one run of about a minute against real agent
// processes, and table tests of the fault schedule, the delivery check and
// the report's arithmetic.

package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// soakSeed's schedule, within soakDuration, applies kill -9 (new ports),
// SIGTERM (same ports) to n1 (the agent the others joined first), SIGSTOP
// and SIGTERM (new ports).
const (
	soakSeed     = 18
	soakDuration = 55 * time.Second
)

// TestSoak runs the soak for about a minute with a fixed seed and asserts
// its verdict.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped with -short: the soak builds the aegis binary and runs five agent processes under load and faults for about a minute")
	}
	o, err := parseOptions([]string{"-seed", strconv.Itoa(soakSeed), "-duration", soakDuration.String(), "-report-every", "20s", "-log-dir", t.TempDir()}, &bytes.Buffer{})
	require.NoError(t, err)
	var out, diag bytes.Buffer
	start := time.Now()
	res, err := run(context.Background(), o, &out, &diag)
	t.Logf("soak took %v; progress:\n%s\nreport:\n%s", time.Since(start).Round(time.Millisecond), diag.String(), out.String())
	require.NoError(t, err)
	assert.True(t, res.pass, res.verdict)
	assert.Zero(t, res.errors, "caller errors")
	assert.True(t, res.delivery.ok(), "handler runs against acknowledged calls: %v", res.delivery.problems)
	assert.GreaterOrEqual(t, res.faults, 3, "faults applied")
	assert.Zero(t, res.unrecovered)
	assert.InDelta(t, float64(soakDuration.Seconds()*200), float64(res.calls), 200, "calls at 200/s")
	assert.Contains(t, out.String(), "\nverdict: PASS: ")
	assert.Contains(t, out.String(), "--- 0:20.0 (period 1: 0:00.0 to 0:20.0) ---")
}

func TestPlanner(t *testing.T) {
	const every, hbTimeout, agents = 10 * time.Second, time.Second, 5
	a, b := newPlanner(7, every, hbTimeout, agents), newPlanner(7, every, hbTimeout, agents)
	other := newPlanner(8, every, hbTimeout, agents)
	kinds := map[faultKind]int{}
	ports := map[bool]int{}
	differs := false
	for range 300 {
		f := a.next()
		require.Equal(t, f, b.next(), "one seed, one schedule")
		differs = differs || f != other.next()
		assert.GreaterOrEqual(t, f.wait, every/2)
		assert.Less(t, f.wait, every*3/2)
		assert.True(t, f.agent >= 0 && f.agent < agents, "agent %d", f.agent)
		kinds[f.kind]++
		switch f.kind {
		case faultStop:
			assert.False(t, f.newPorts)
			assert.GreaterOrEqual(t, f.hold, hbTimeout+stopExtraMin, "a stop outlasts the heartbeat timeout")
			assert.Less(t, f.hold, hbTimeout+stopExtraMin+stopExtraSpread)
		case faultKill, faultTerm:
			ports[f.newPorts]++
			assert.GreaterOrEqual(t, f.hold, restartDelayMin)
			assert.Less(t, f.hold, restartDelayMin+restartDelaySpread)
		default:
			t.Fatalf("unknown kind %v", f.kind)
		}
	}
	assert.True(t, differs, "another seed, another schedule")
	for k := range numFaultKinds {
		assert.Greater(t, kinds[k], 60, "%v drawn %d times in 300", k, kinds[k])
	}
	assert.Greater(t, ports[true], 40)
	assert.Greater(t, ports[false], 40)
	assert.Equal(t, "kill -9", faultKill.String())
	assert.True(t, faultTerm.restarts())
	assert.False(t, faultStop.restarts())
}

func TestCheckDelivery(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	// ok is an answered call from start to end (seconds) by instance id
	// with run n, routed to picks (id alone when none are given).
	ok := func(start, end float64, id string, n int64, picks ...string) callOutcome {
		if len(picks) == 0 {
			picks = []string{id}
		}
		return callOutcome{start: at(start), end: at(end), answer: countAnswer{Instance: id, Node: strings.TrimPrefix(id, "count-"), Service: serviceName, Count: n}, picks: picks}
	}
	failed := func(picks ...string) callOutcome {
		return callOutcome{start: at(1), end: at(2), err: "aegis: timeout", picks: picks}
	}
	one := func(runs int64) []processSpan { return []processSpan{{started: at(0), runs: runs}} }
	// restarted: a process from 0s, ended (runs unknown), and one from 10s.
	restarted := func(runs int64) []processSpan {
		return []processSpan{{started: at(0), runs: -1}, {started: at(10), runs: runs}}
	}
	const a, b = "count-n1", "count-n2"
	tests := []struct {
		name  string
		calls []callOutcome
		procs map[string][]processSpan
		ok    bool
		want  delivery // compared: answered, failed, malformed, misrouted, shared
		runs  int64
		extra int64
		allow int
	}{
		{"every call one run", []callOutcome{ok(0, 1, a, 1), ok(0, 1, a, 2), ok(0, 1, b, 1)},
			map[string][]processSpan{a: one(2), b: one(1)}, true, delivery{answered: 3}, 3, 0, 0},
		{"a run answered to two calls", []callOutcome{ok(0, 1, a, 1), ok(0, 1, a, 1)},
			map[string][]processSpan{a: one(1)}, false, delivery{answered: 2, shared: 1}, 1, 0, 0},
		{"answered by an instance never picked", []callOutcome{ok(0, 1, b, 1, a)},
			map[string][]processSpan{a: one(0), b: one(1)}, false, delivery{answered: 1, misrouted: 1}, 1, 0, 1},
		{"not a count answer", []callOutcome{{start: at(0), end: at(1), badAnswer: "hello", picks: []string{a}}},
			map[string][]processSpan{a: one(0)}, false, delivery{answered: 1, malformed: 1}, 0, 0, 0},
		{"an unknown instance", []callOutcome{ok(0, 1, "count-n9", 1, "count-n9")},
			map[string][]processSpan{a: one(0)}, false, delivery{answered: 1, malformed: 1}, 0, 0, 0},
		{"a second run after failover is allowed", []callOutcome{ok(0, 1, a, 1), ok(0, 1, b, 1, a, b)},
			map[string][]processSpan{a: one(2), b: one(1)}, true, delivery{answered: 2}, 3, 1, 1},
		{"a second run on the same process is not", []callOutcome{ok(0, 1, a, 1), ok(0, 1, a, 3)},
			map[string][]processSpan{a: one(3)}, false, delivery{answered: 2}, 3, 1, 0},
		{"a failed call may have run", []callOutcome{ok(0, 1, a, 1), failed(a, b)},
			map[string][]processSpan{a: one(2), b: one(0)}, true, delivery{answered: 1, failed: 1}, 2, 1, 2},
		{"the probe below an answer", []callOutcome{ok(0, 1, a, 2)},
			map[string][]processSpan{a: one(1)}, false, delivery{answered: 1}, 2, 1, 0},
		{"processes number their runs apart", []callOutcome{ok(0, 1, a, 1), ok(1, 2, a, 2), ok(11, 12, a, 1), ok(11, 12, a, 2)},
			map[string][]processSpan{a: restarted(2)}, true, delivery{answered: 4}, 4, 0, 0},
		{"a call in flight across a restart may run on both processes", []callOutcome{ok(0, 1, a, 1), ok(9, 11, a, 1), ok(11, 12, a, 2)},
			map[string][]processSpan{a: restarted(3)}, true, delivery{answered: 3}, 4, 1, 1},
		{"an ended process's runs are its highest answer", []callOutcome{ok(0, 1, a, 5), ok(11, 12, a, 1)},
			map[string][]processSpan{a: restarted(1)}, false, delivery{answered: 2}, 6, 4, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := checkDelivery(serviceName, tt.calls, tt.procs)
			assert.Equal(t, tt.ok, d.ok(), "problems: %v", d.problems)
			assert.Equal(t, len(tt.calls), d.calls)
			assert.Equal(t, tt.want.answered, d.answered, "answered")
			assert.Equal(t, tt.want.failed, d.failed, "failed")
			assert.Equal(t, tt.want.malformed, d.malformed, "malformed")
			assert.Equal(t, tt.want.misrouted, d.misrouted, "misrouted")
			assert.Equal(t, tt.want.shared, d.shared, "shared")
			runs, extra, allowed, _, _ := d.totals()
			assert.Equal(t, tt.runs, runs, "runs")
			assert.Equal(t, tt.extra, extra, "extra runs")
			assert.Equal(t, tt.allow, allowed, "allowed")
			if !tt.ok {
				assert.NotEmpty(t, d.problems, "a failed check says why")
			}
		})
	}
}

func TestLifeOf(t *testing.T) {
	t0 := time.Unix(1000, 0)
	spans := []processSpan{{started: t0}, {started: t0.Add(10 * time.Second)}, {started: t0.Add(20 * time.Second)}}
	for _, tt := range []struct {
		at   time.Duration
		want int
	}{{-time.Second, 0}, {0, 0}, {5 * time.Second, 0}, {10 * time.Second, 1}, {19 * time.Second, 1}, {25 * time.Second, 2}} {
		assert.Equal(t, tt.want, lifeOf(spans, t0.Add(tt.at)), "at %v", tt.at)
	}
	assert.True(t, restartedWithin(spans, t0.Add(9*time.Second), t0.Add(11*time.Second)))
	assert.False(t, restartedWithin(spans, t0.Add(-time.Second), t0.Add(time.Second)), "the first process is no restart")
	assert.False(t, restartedWithin(spans, t0.Add(11*time.Second), t0.Add(19*time.Second)))
}

func TestReportArithmetic(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	var lat []time.Duration
	for i := 1; i <= 100; i++ {
		lat = append(lat, ms(i))
	}
	assert.Equal(t, ms(50), percentile(lat, 0.5))
	assert.Equal(t, ms(99), percentile(lat, 0.99))
	assert.Equal(t, ms(100), percentile(lat, 1))
	assert.Zero(t, percentile(nil, 0.5))

	start := time.Unix(1000, 0)
	assert.Equal(t, "0:07.3", offset(start, start.Add(7340*time.Millisecond)))
	assert.Equal(t, "10:02.0", offset(start, start.Add(10*time.Minute+2*time.Second)))
	assert.Equal(t, "-0:00.5", offset(start, start.Add(-500*time.Millisecond)))
	assert.Equal(t, "-", offset(start, time.Time{}))
	assert.Equal(t, "0.412ms", msText(412*time.Microsecond))
	assert.Equal(t, "12.3ms", msText(12345*time.Microsecond))
	assert.Equal(t, "1503ms", msText(1503*time.Millisecond))

	var cs callStats
	for _, err := range []string{"", "aegis: no healthy instances", "aegis: no healthy instances", ""} {
		cs.add(ms(2), err)
	}
	s := summarize(cs)
	assert.Equal(t, 4, s.calls)
	assert.Equal(t, 2, s.errors)
	assert.Equal(t, []string{"aegis: no healthy instances"}, s.samples, "each text quoted once")
	assert.Contains(t, s.sampleText(), `"aegis: no healthy instances"`)
	assert.Equal(t, "p50 2.00ms  p99 2.00ms  max 2.00ms", s.latencyText())

	st := parseProcStatus("Name:\taegis\nVmRSS:\t   21504 kB\nThreads:\t9\n")
	assert.Equal(t, procStat{ok: true, rssKiB: 21504, threads: 9}, st)
	st.goroutines = -1
	assert.Equal(t, "RSS 21.0 MiB, 9 threads", st.String())
	assert.False(t, parseProcStatus("Name:\taegis\n").ok)

	l := newLogScan()
	_, _ = l.Write([]byte(`{"level":"INFO","msg":"aegis agent started","gossip":"127.0.0.1:1","calls":"127.0.0.1:2"}` + "\n" +
		`{"level":"WARN","msg":"node n2 failed at 127.0.0.1:4000"}` + "\n" + `{"level":"WARN","msg":"node n3 failed at 127.0.0.1:4001","err":"x"}` + "\n{\"level\":\"ERR"))
	_, _ = l.Write([]byte("OR\",\"msg\":\"boom\"}\n"))
	select {
	case <-l.Started():
	default:
		t.Fatal("the startup line was not seen")
	}
	assert.Equal(t, "127.0.0.1:2", l.StartupField("calls"))
	warns, errs, msgs := l.summary()
	assert.Equal(t, 2, warns)
	assert.Equal(t, 1, errs)
	require.Len(t, msgs, 2)
	assert.Equal(t, logMessage{level: "WARN", kind: "node nN failed at N.N.N.N:N", example: "node n2 failed at 127.0.0.1:4000", count: 2}, msgs[0])
}

// TestTallyAsProcessesAppear adds calls as the soak does, each with the
// processes started before it ended, and gets the account of the whole.
func TestTallyAsProcessesAppear(t *testing.T) {
	t0 := time.Unix(1000, 0)
	sec := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	const id = "count-n1"
	first := map[string][]processSpan{id: {{started: t0, runs: -1}}}
	both := map[string][]processSpan{id: {{started: t0, runs: -1}, {started: sec(10), runs: -1}}}
	answer := func(start, end int, n int64) callOutcome {
		return callOutcome{start: sec(start), end: sec(end), picks: []string{id},
			answer: countAnswer{Instance: id, Node: "n1", Service: serviceName, Count: n}}
	}
	tl := newTally(serviceName)
	for n := int64(1); n <= 200; n++ {
		tl.add(answer(1, 2, n), first)
	}
	tl.add(answer(9, 11, 1), both) // in flight across the restart
	tl.add(answer(11, 12, 2), both)
	final := map[string][]processSpan{id: {{started: t0, runs: -1}, {started: sec(10), runs: 3}}}
	d := tl.result(final)
	assert.True(t, d.ok(), "%v", d.problems)
	require.Len(t, d.instances, 1)
	assert.Equal(t, instanceDelivery{id: id, processes: 2, probed: 1, runs: 203, acked: 202, extra: 1, allowed: 1}, d.instances[0])

	tl.add(answer(12, 13, 2), final) // run 2 of the second process again
	d = tl.result(final)
	assert.False(t, d.ok())
	assert.Equal(t, 1, d.shared)
	assert.Contains(t, d.problems[0], "run 2 of count-n1 (process 2)")
}
