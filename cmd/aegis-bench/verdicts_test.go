package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/agentproc"
)

func TestParseVerdicts(t *testing.T) {
	o, err := parseVerdicts(nil, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 20, o.n)
	assert.Equal(t, 19, o.victim, "the last agent by default")
	assert.Equal(t, 10*time.Minute, o.duration)
	assert.Equal(t, "fast", o.gossip)
	assert.Equal(t, "busy", o.starve)
	assert.InDelta(t, 0.1, o.loss, 1e-9)

	o, err = parseVerdicts([]string{"-n", "5", "-starve", "cpumax", "-cpu-quota", "2ms", "-victim", "2"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, 2, o.victim)
	assert.Contains(t, o.starveDescription(), "a02's cgroup limited to 2ms of CPU per 100ms (2.0% of one CPU)")

	for _, bad := range [][]string{
		{"-n", "2"},
		{"-starve", "freeze"},
		{"-gossip", "wan"},
		{"-loss", "1"},
		{"-starve-for", "30s"},
		{"-nice", "20"},
		{"-cpu-quota", "500us"},
		{"-victim", "20"},
		{"extra"},
	} {
		_, err := parseVerdicts(bad, io.Discard)
		assert.Error(t, err, "%v", bad)
	}
}

func TestVerdictsWindows(t *testing.T) {
	o := &verdictsOptions{starve: "busy", duration: 100 * time.Second, starveEvery: 30 * time.Second, starveFor: 5 * time.Second}
	assert.Equal(t, []time.Duration{15 * time.Second, 45 * time.Second, 75 * time.Second}, o.windows())
	o.duration = 10 * time.Minute
	assert.Len(t, o.windows(), 20)
	o.starve = "none"
	assert.Empty(t, o.windows())
}

// agentLine returns an agent's JSON log line as the tracker gets it.
func agentLine(t *testing.T, at time.Time, fields map[string]any) agentproc.Line {
	t.Helper()
	fields["time"] = at.Format(time.RFC3339Nano)
	b, err := json.Marshal(fields)
	require.NoError(t, err)
	ln := agentproc.Line{At: at.Add(time.Second), Raw: string(b)}
	require.NoError(t, json.Unmarshal(b, &ln.Fields))
	return ln
}

// TestVerdictsTrackerAndReport feeds a three-agent run's log lines to the
// tracker and checks what the report makes of them.
func TestVerdictsTrackerAndReport(t *testing.T) {
	o, err := parseVerdicts([]string{"-n", "3", "-duration", "60s", "-starve", "stop"}, io.Discard)
	require.NoError(t, err)
	tr := newTracker()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	names := []string{"a00", "a01", "a02"}
	for _, o := range names {
		for _, p := range names {
			tr.line(o, agentLine(t, at(-10), map[string]any{"level": "INFO", "msg": "instance registered", "event": "registered",
				"service": "echo", "instance": "echo-" + p, "status": "healthy"}))
			if p != o {
				tr.line(o, agentLine(t, at(-10), map[string]any{"level": "INFO", "msg": "node joined", "peer": p}))
			}
		}
	}
	ok, _ := tr.converged(names)
	require.True(t, ok)

	// a02 is suspected and declared dead in the first window, by a00; both
	// others report it; a01 is suspected once and refutes.
	tr.line("a00", agentLine(t, at(16), map[string]any{"level": "INFO", "msg": "memberlist: Suspect a02 has failed, no acks received"}))
	tr.line("a01", agentLine(t, at(16.5), map[string]any{"level": "INFO", "msg": "memberlist: Suspect a02 has failed, no acks received"}))
	tr.line("a00", agentLine(t, at(17), map[string]any{"level": "INFO", "msg": "memberlist: Marking a02 as failed, suspect timeout reached (1 peer confirmations)"}))
	tr.line("a00", agentLine(t, at(17), map[string]any{"level": "WARN", "msg": "node failed", "peer": "a02"}))
	tr.line("a01", agentLine(t, at(17.1), map[string]any{"level": "WARN", "msg": "node failed", "peer": "a02"}))
	tr.line("a01", agentLine(t, at(17.1), map[string]any{"level": "INFO", "msg": "instance status-changed", "event": "status-changed",
		"service": "echo", "instance": "echo-a02", "status": "unhealthy", "reason": "node-failed"}))
	tr.line("a02", agentLine(t, at(30), map[string]any{"level": "INFO", "msg": "memberlist: Suspect a01 has failed, no acks received"}))
	ok, why := tr.converged(names)
	assert.False(t, ok)
	assert.Contains(t, why, "sees 1/2 peers")
	// After the end: the agents leave.
	tr.line("a00", agentLine(t, at(80), map[string]any{"level": "WARN", "msg": "node failed", "peer": "a01"}))

	r := &verdictsRun{opt: o, command: "aegis-bench verdicts -n 3", started: at(0), ended: at(75), lossMethod: "netem", lossSent: 900, lossDropped: 100,
		windows:     []starveWindow{{start: at(15), end: at(20), victimCPU: 20 * time.Millisecond}, {start: at(45), end: at(50)}},
		agentsAlive: 3, cpu: []time.Duration{time.Second, 2 * time.Second, time.Second}, victimCPU: time.Second, t: tr}
	assert.Equal(t, 2, r.falseVerdicts())
	assert.False(t, r.pass())
	eps := r.episodes()
	require.Len(t, eps, 1)
	assert.Equal(t, "a02", eps[0].subject)
	assert.Equal(t, 2, eps[0].observers)
	assert.Equal(t, 0, eps[0].window)
	assert.Equal(t, []string{"a00 (1 confirmations)"}, eps[0].declaredBy)

	var out bytes.Buffer
	r.report(&out, []string{"date: today"})
	rep := out.String()
	assert.Contains(t, rep, "- command: `aegis-bench verdicts -n 3`")
	assert.Contains(t, rep, "measured: 100 of 1000 packets dropped (10.0%)")
	assert.Contains(t, rep, "| 1 | 15.0 | 20 | 2 | 0 | 1 | 2 |", "first window and until the second: two suspicions of a02, one of a01, two reports")
	assert.Contains(t, rep, "| 2 | 45.0 | 0 | 0 | 0 | 0 | 0 |", "second window: nothing")
	assert.Contains(t, rep, "| 1 | a02 | 17.0 | 1 (+2.0 s) | 2/2 | a00 (1 confirmations) |")
	assert.Contains(t, rep, "| instances turned unhealthy, by reason | (node-failed ×1) |")
	assert.Contains(t, rep, "| WARN node failed | 2 |")
	assert.True(t, strings.HasSuffix(rep, "FAIL: 2 false node-failed reports (1 verdicts grouped by node), 3 of 3 agents ran to the end\n"), rep)

	r.t = newTracker()
	out.Reset()
	r.report(&out, nil)
	assert.Contains(t, out.String(), "PASS: no false node-failed verdict in 75 s with 10% loss and a02 starved 2 times")
}
