//go:build linux

// This file holds a cluster of agent processes in a lab, the instance
// events their logs report, the aegis load client and the check of every
// call's handler runs, message ID by message ID.

package netns

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/agentproc"
	"github.com/aegisipc/aegis/internal/runlog"
)

// keyEnv is the variable the agent and load read the secret key from; it
// keeps the key out of process listings.
const keyEnv = "AEGIS_KEY"

// cluster is agentCount agents (hosts n1…n5, agents of the same names)
// serving the count service, and a client host c for the loads.
type cluster struct {
	t      *testing.T
	lab    *lab
	bin    string
	key    string // base64
	agents []*proc
	client *host
	dir    string // for the agents' runs and the loads' calls
	loads  int    // load runs so far, to name them
}

// newCluster makes a lab, starts an agent on each of its five node hosts
// (n2…n5 join n1) and waits until every agent logs every instance
// healthy. On failure the agents' logs are printed.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	var names []string
	for i := range agentCount {
		names = append(names, fmt.Sprintf("n%d", i+1))
	}
	l := newLab(t, append(names, "c")...)
	c := &cluster{t: t, lab: l, bin: agentBinary(t), key: base64.StdEncoding.EncodeToString(aegis.NewSecretKey()), client: l.host("c"), dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range c.agents {
				t.Logf("log of %s (last lines):\n%s", a.Name, a.stderr.Tail(40))
			}
		}
	})
	start := time.Now()
	seed := l.host("n1").gossipAddr()
	for i := range agentCount {
		h := l.host(fmt.Sprintf("n%d", i+1))
		args := []string{c.bin, "agent", "-name", h.name, "-bind", h.gossipAddr(), "-serve", service,
			"-gossip", gossipProfile, "-heartbeat-interval", hbInterval.String(), "-heartbeat-timeout", hbTimeout.String(),
			"-health-check-interval", healthCheck.String(), "-log-format", "json", "-join-timeout", startLimit.String()}
		if i > 0 {
			args = append(args, "-join", seed)
		}
		name := "agent " + h.name
		args = append(args, "-runs-file", c.runsFile(name))
		a := startProc(t, name, h.ns, []string{keyEnv + "=" + c.key}, args...)
		c.agents = append(c.agents, a)
		if i == 0 {
			// The agent subscribes to events only once its node runs, and
			// its gossip port is open before: an instance the seed learns
			// from a node joining in between is never logged. So the
			// others start once the seed has logged its startup line.
			_, _, err := agentproc.WaitStarted(context.Background(), a.Proc, a.stderr, startLimit)
			require.NoError(t, err)
		}
	}
	ok := waitFor(startLimit, func() bool {
		for _, a := range c.agents {
			if !a.Alive() {
				return true
			}
			for i := range agentCount {
				if c.state(a, instanceID(fmt.Sprintf("n%d", i+1))) != "healthy" {
					return false
				}
			}
		}
		return true
	})
	for _, a := range c.agents {
		require.True(t, a.Alive(), "%s exited: %v", a.Name, a.Err())
	}
	require.True(t, ok, "every agent sees every instance healthy within %v", startLimit)
	t.Logf("%d agents converged in %v", agentCount, time.Since(start).Round(time.Millisecond))
	return c
}

// instanceID is the ID of the count instance the agent named node serves.
func instanceID(node string) string { return service + "-" + node }

// event is one instance event an agent logged.
type event struct {
	at       time.Time // the agent's log time
	observer string    // the agent that logged it
	kind     string    // registered, status-changed, deregistered, …
	instance string
	status   string // the instance's status after the event
	reason   string
}

func (e event) String() string {
	return fmt.Sprintf("%s %s saw %s %s → %s (%s)", e.at.Format("15:04:05.000"), e.observer, e.instance, e.kind, e.status, e.reason)
}

// events returns the instance events agent a logged, oldest first.
func (c *cluster) events(a *proc) []event {
	var out []event
	for _, ln := range a.stderr.Find(func(ln agentproc.Line) bool { return strings.HasPrefix(ln.Str("msg"), "instance ") }) {
		out = append(out, event{at: ln.Time(), observer: ln.Str("node"), kind: ln.Str("event"),
			instance: ln.Str("instance"), status: ln.Str("status"), reason: ln.Str("reason")})
	}
	return out
}

// allEvents returns the instance events of every agent that match.
func (c *cluster) allEvents(match func(event) bool) []event {
	var out []event
	for _, a := range c.agents {
		for _, e := range c.events(a) {
			if match(e) {
				out = append(out, e)
			}
		}
	}
	return out
}

// state returns what agent a's newest event about instance id says: its
// status, "gone" after a deregistration, "" when it logged none.
func (c *cluster) state(a *proc, id string) string {
	state := ""
	for _, e := range c.events(a) {
		switch {
		case e.instance != id:
		case e.kind == "registered" || e.kind == "status-changed":
			state = e.status
		case e.kind == "deregistered":
			state = "gone"
		}
	}
	return state
}

// agent returns the agent process on host name.
func (c *cluster) agent(name string) *proc {
	i := slices.IndexFunc(c.agents, func(p *proc) bool { return p.Name == "agent "+name })
	require.GreaterOrEqual(c.t, i, 0, "no agent %s", name)
	return c.agents[i]
}

// verdicts returns the events since since that made an instance unhealthy
// or took it away, on any agent.
func (c *cluster) verdicts(since time.Time) []event {
	return c.allEvents(func(e event) bool {
		if e.at.Before(since) {
			return false
		}
		return (e.kind == "status-changed" && e.status != "healthy") || e.kind == "deregistered" ||
			(e.kind == "registered" && e.status != "healthy")
	})
}

// warnings counts the WARN and ERROR lines every agent logged since since.
func (c *cluster) warnings(since time.Time) int {
	n := 0
	for _, a := range c.agents {
		n += len(a.stderr.Find(func(ln agentproc.Line) bool {
			lv := ln.Str("level")
			return (lv == "WARN" || lv == "ERROR") && !ln.Time().Before(since)
		}))
	}
	return n
}

// load is one aegis load process on the client host.
type load struct {
	*proc
	name      string
	duration  time.Duration        // 0: until finish stops it
	callsFile string               // where it writes its calls down
	total     agentproc.LoadReport // set by finish
}

// Methods of the count service the loads call in turn: any method but
// whoami and onceMethod runs the count handler as an idempotent method.
const (
	incMethod  = "inc"
	onceMethod = "once"
)

// startLoad starts aegis load on the client host: it calls methods
// incMethod and onceMethod of the count service in turn with
// CallWithFailover at callRate calls a second for d (0: until stopped),
// writing every call down, and waits until it has made its first calls.
func (c *cluster) startLoad(d time.Duration) *load {
	c.t.Helper()
	c.loads++
	name := fmt.Sprintf("load%d", c.loads)
	var seeds []string
	for i := range agentCount {
		seeds = append(seeds, c.lab.host(fmt.Sprintf("n%d", i+1)).gossipAddr())
	}
	p := startProc(c.t, name, c.client.ns, []string{keyEnv + "=" + c.key}, c.bin, "load",
		"-name", name, "-bind", c.client.gossipAddr(), "-join", strings.Join(seeds, ","),
		"-service", service, "-method", incMethod+","+onceMethod, "-calls-file", filepath.Join(c.dir, name+".calls"),
		"-rate", fmt.Sprint(callRate), "-duration", d.String(),
		"-timeout", callTimeout.String(), "-attempt-timeout", attemptTimeout.String(),
		"-gossip", gossipProfile, "-heartbeat-interval", hbInterval.String(), "-heartbeat-timeout", hbTimeout.String(),
		"-health-check-interval", healthCheck.String(), "-log-format", "json")
	c.t.Cleanup(func() {
		if c.t.Failed() {
			c.t.Logf("stderr of %s (last lines):\n%s", name, p.stderr.Tail(20))
		}
	})
	ok := waitFor(startLimit, func() bool { return p.stdout.Len() > 0 || !p.Alive() })
	require.True(c.t, ok && p.Alive(), "%s made its first calls within %v (%v); its stderr:\n%s", name, startLimit, p.Err(), p.stderr.Tail(20))
	return &load{proc: p, name: name, duration: d, callsFile: filepath.Join(c.dir, name+".calls")}
}

// reports returns the load's per-second reports so far.
func (l *load) reports() []agentproc.LoadReport {
	var out []agentproc.LoadReport
	for _, ln := range l.stdout.Find(func(ln agentproc.Line) bool { return ln.Str("report") == "second" }) {
		var r agentproc.LoadReport
		if json.Unmarshal([]byte(ln.Raw), &r) == nil {
			out = append(out, r)
		}
	}
	return out
}

// finish waits for the load to exit, after stopping it with SIGINT when
// it runs until stopped, and returns its total report.
func (l *load) finish(t *testing.T) agentproc.LoadReport {
	t.Helper()
	if l.duration == 0 && l.Alive() {
		require.NoError(t, l.Signal(syscall.SIGINT))
	}
	l.wait(t, l.duration+2*callTimeout+10*time.Second)
	totals := l.stdout.Find(func(ln agentproc.Line) bool { return ln.Str("report") == "total" })
	require.Len(t, totals, 1, "%s printed one total; its output:\n%s", l.name, l.stdout.Tail(5))
	require.NoError(t, json.Unmarshal([]byte(totals[0].Raw), &l.total))
	return l.total
}

// checkLeft asserts that every agent logged the load's node as left (it
// leaves gracefully when it finishes, hosting no instance), and none as
// failed.
func (c *cluster) checkLeft(l *load) {
	c.t.Helper()
	for _, a := range c.agents {
		about := func(msg string) func() bool {
			return func() bool {
				return len(a.stderr.Find(func(ln agentproc.Line) bool { return ln.Str("msg") == msg && ln.Str("peer") == l.name })) > 0
			}
		}
		assert.True(c.t, waitFor(10*time.Second, about("node left")), "%s logged %s as left", a.Name, l.name)
		assert.False(c.t, about("node failed")(), "%s logged %s as failed", a.Name, l.name)
	}
}

// largestShare returns the largest share of one second's answers that a
// single instance gave, and that second's report.
func largestShare(rs []agentproc.LoadReport) (float64, agentproc.LoadReport) {
	var share float64
	var at agentproc.LoadReport
	for _, r := range rs {
		for _, n := range r.Instances {
			if s := float64(n) / float64(max(1, r.Calls-r.Errors)); s > share {
				share, at = s, r
			}
		}
	}
	return share, at
}

// steadyP99 returns the highest per-second p99 after the first second,
// which holds the connection set-up.
func steadyP99(rs []agentproc.LoadReport) float64 {
	p := 0.0
	for _, r := range rs[min(1, len(rs)):] {
		p = max(p, r.P99Ms)
	}
	return p
}

// worstSecond returns the per-second report with the highest p99.
func worstSecond(rs []agentproc.LoadReport) agentproc.LoadReport {
	var w agentproc.LoadReport
	for _, r := range rs {
		if r.P99Ms > w.P99Ms {
			w = r
		}
	}
	return w
}

// checkDelivery kills every agent (so that no handler runs after the
// check reads the runs; a count instance writes each run down before it
// answers) and checks, message ID by
// message ID, the runs the count instances wrote down against the calls
// the loads wrote down (see runlog.Check):
//   - every acknowledged call ran, and its answer is a run of its own
//     message ID on the instance that answered;
//   - a call to onceMethod (non-idempotent) ran at most once, exactly once
//     when acknowledged: CallWithFailover never hedges it and moves it
//     only when the request provably never arrived;
//   - a call to incMethod (idempotent) ran at most once per instance, since
//     every instance's dedup cache remembers the one run's answer for the
//     whole test (fewer than DedupMaxEntries calls, within DedupWindow,
//     no agent restarts), and at most maxIdempotentRuns times in all.
//
// Extra runs of idempotent calls are duplicate executions, not duplicate
// answers: only the first answer reaches the caller. It must be called
// last: the agents are gone after it.
func (c *cluster) checkDelivery(loads ...*load) {
	c.t.Helper()
	c.killAgents()
	var calls []runlog.Call
	for _, ld := range loads {
		cs := ld.calls(c.t)
		acked := 0
		for _, cl := range cs {
			if cl.Err == "" {
				acked++
			}
		}
		r := ld.total
		assert.Equal(c.t, r.Calls, len(cs), "%s wrote down every call it counted", ld.name)
		assert.Equal(c.t, r.Calls-r.Errors, acked, "%s: answered calls written down equal calls less errors", ld.name)
		assert.Equal(c.t, r.Calls-r.Errors, sumValues(r.Instances), "%s: answers counted per instance equal calls less errors", ld.name)
		calls = append(calls, cs...)
	}
	var runs []runlog.Run
	for _, a := range c.agents {
		rs, err := runlog.Read[runlog.Run](c.runsFile(a.Name))
		require.NoError(c.t, err, "runs of %s", a.Name)
		runs = append(runs, rs...)
	}
	require.NotEmpty(c.t, calls, "the loads made calls")
	r := runlog.Check(calls, runs, runlog.Bounds{
		NonIdempotent: func(m string) bool { return m == onceMethod },
		MaxRuns:       maxIdempotentRuns,
		PerInstance:   1,
	})
	c.t.Logf("delivery: %s", r)
	assert.True(c.t, r.OK(), "no call lost or run more often than allowed: %d violations, the first:\n%s", r.Violations, strings.Join(r.Problems, "\n"))
	assert.Positive(c.t, r.Acked, "calls were acknowledged")
}

// maxIdempotentRuns bounds the runs of one idempotent call: the loads'
// CallWithFailover tries at most MaxAttempts (3, the default) distinct
// instances in turn and may hedge each try onto one more instance, each
// of which runs it at most once; here that is all five instances.
var maxIdempotentRuns = min(agentCount, 2*aegis.DefaultConfig().MaxAttempts)

// killAgents kills every agent by its PID and waits for each to exit.
func (c *cluster) killAgents() {
	for _, a := range c.agents {
		a.kill(c.t)
	}
}

// calls returns the calls the load wrote down.
func (l *load) calls(t *testing.T) []runlog.Call {
	t.Helper()
	cs, err := runlog.Read[runlog.Call](l.callsFile)
	require.NoError(t, err, "calls of %s", l.name)
	return cs
}

// runsFile is where the agent process named name writes the runs of its
// count instance.
func (c *cluster) runsFile(name string) string {
	return filepath.Join(c.dir, strings.ReplaceAll(name, " ", "-")+".runs")
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
