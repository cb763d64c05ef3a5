//go:build unix

// This file holds the harness of the process-level tests: agent processes
// (see internal/agentproc) and what their JSON logs say, a cluster of them
// with an in-test client node, and the driver that calls through that
// client at a fixed rate and keeps every outcome.

package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/agentproc"
)

// Settings of every process-level cluster: agents and client use the same
// heartbeat timings (each node judges instances with its own timeout).
const (
	procService        = "svc"
	procAgents         = 5
	procHBInterval     = 200 * time.Millisecond
	procHBTimeout      = time.Second
	procHealthCheck    = 100 * time.Millisecond
	procRate           = 200 // calls per second started by the driver
	procAttemptTimeout = 500 * time.Millisecond
	procCallTimeout    = 5 * time.Second
	procStartLimit     = 15 * time.Second // for a process to log its startup line
)

// buildAgent builds the aegis binary into dir and returns its path.
func buildAgent(t *testing.T, dir string) string {
	t.Helper()
	start := time.Now()
	bin, err := agentproc.Build(context.Background(), dir)
	require.NoError(t, err)
	t.Logf("built the agent binary in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// agentProc is one agent process.
type agentProc struct {
	*agentproc.Proc
	log           *agentproc.Log // what it writes, stdout and stderr
	gossip, calls string         // addresses from the startup line
}

// instanceState is what the agent's event log says of instance id after
// since (by when the test read the line): the status of its newest event,
// "gone" after a deregistration, "" when it logged none.
func (p *agentProc) instanceState(id string, since time.Time) string {
	state := ""
	for _, line := range p.log.Find(func(l agentproc.Line) bool { return l.Str("instance") == id && !l.At.Before(since) }) {
		switch line.Str("event") {
		case "registered", "status-changed":
			state = line.Str("status")
		case "deregistered":
			state = "gone"
		}
	}
	return state
}

// healthyAt reports whether the agent's newest event about instance id
// (ejections aside) leaves it healthy at call address addr.
func (p *agentProc) healthyAt(id, addr string) bool {
	lines := p.log.Find(func(l agentproc.Line) bool {
		ev := l.Str("event")
		return l.Str("instance") == id && (ev == "registered" || ev == "status-changed" || ev == "deregistered")
	})
	if len(lines) == 0 {
		return false
	}
	last := lines[len(lines)-1]
	return last.Str("event") != "deregistered" && last.Str("status") == "healthy" && last.Str("addr") == addr
}

// signal sends sig to the process by its PID.
func (p *agentProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.Signal(sig))
}

// waitExit waits up to limit for the process to exit and returns its exit
// code (-1 when a signal ended it).
func (p *agentProc) waitExit(t *testing.T, limit time.Duration) int {
	t.Helper()
	if !p.Wait(limit) {
		t.Fatalf("%s did not exit within %v; its log ends with:\n%s", p.Name, limit, p.log.Tail(20))
	}
	return p.ExitCode()
}

// procCluster is a cluster of agent processes plus an in-test client node.
type procCluster struct {
	t      *testing.T
	bin    string
	key    string // base64, given to agents through the environment
	agents []*agentProc
	client *aegis.Node
	clog   *agentproc.Log // the client's log
}

// newProcCluster starts procAgents agents serving procService (named n1,
// n2, …; n2 onwards join n1), a client node that joins them all, and waits
// until every node sees every instance. Every process is killed by its PID
// when the test ends.
func newProcCluster(t *testing.T, bin string, agents int) *procCluster {
	t.Helper()
	return newProcClusterWith(t, bin, agents, nil)
}

// newProcClusterWith is newProcCluster with extra(i) added to agent i's
// flags when extra is not nil.
func newProcClusterWith(t *testing.T, bin string, agents int, extra func(i int) []string) *procCluster {
	t.Helper()
	c := &procCluster{t: t, bin: bin, key: base64.StdEncoding.EncodeToString(aegis.NewSecretKey()), clog: agentproc.NewLog()}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range c.agents {
				t.Logf("log of %s (last lines):\n%s", p.Name, p.log.Tail(40))
			}
			t.Logf("log of the client (last lines):\n%s", c.clog.Tail(40))
		}
	})
	for i := range agents {
		var args []string
		if i > 0 {
			args = []string{"-join", c.agents[0].gossip}
		}
		if extra != nil {
			args = append(args, extra(i)...)
		}
		c.agents = append(c.agents, c.startAgent(fmt.Sprintf("n%d", i+1), args...))
	}
	cfg := aegis.DefaultConfig()
	cfg.NodeName = "client"
	cfg.Gossip = aegis.LocalGossip()
	cfg.HeartbeatInterval, cfg.HeartbeatTimeout, cfg.HealthCheckInterval = procHBInterval, procHBTimeout, procHealthCheck
	cfg.AttemptTimeout = procAttemptTimeout
	key, err := base64.StdEncoding.DecodeString(c.key)
	require.NoError(t, err)
	cfg.SecretKey = key
	cfg.Logger = slog.New(slog.NewJSONHandler(c.clog, &slog.HandlerOptions{Level: slog.LevelInfo}))
	client, err := aegis.New(cfg)
	require.NoError(t, err)
	c.client = client
	t.Cleanup(func() { _ = client.Shutdown() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.Join(ctx, c.seeds("")...)
	require.NoError(t, err)

	start := time.Now()
	c.waitFor("every node sees every instance healthy", 15*time.Second, func() bool {
		if len(client.HealthyInstances(procService)) != agents {
			return false
		}
		for _, p := range c.agents {
			for _, q := range c.agents {
				if p.instanceState(instanceID(q.Name), time.Time{}) != "healthy" {
					return false
				}
			}
		}
		return true
	})
	t.Logf("cluster of %d agents and a client converged in %v", agents, time.Since(start).Round(time.Millisecond))
	return c
}

// instanceID is the ID of the procService instance an agent named node
// registers.
func instanceID(node string) string { return procService + "-" + node }

// seeds returns the gossip addresses of the running agents but the one
// named except.
func (c *procCluster) seeds(except string) []string {
	var out []string
	for _, p := range c.agents {
		if p.Name != except && p.Alive() {
			out = append(out, p.gossip)
		}
	}
	return out
}

// startAgent starts an agent process named name with the cluster's
// settings plus extra flags (a later -bind wins over the default one) and
// waits for its startup line.
func (c *procCluster) startAgent(name string, extra ...string) *agentProc {
	t := c.t
	t.Helper()
	args := append([]string{"agent", "-name", name, "-bind", "127.0.0.1:0", "-gossip", "local",
		"-heartbeat-interval", procHBInterval.String(), "-heartbeat-timeout", procHBTimeout.String(),
		"-health-check-interval", procHealthCheck.String(), "-serve", "echo:" + procService,
		"-log-format", "json", "-join-timeout", "20s", "-leave-timeout", "10s"}, extra...)
	p := &agentProc{log: agentproc.NewLog()}
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), keyEnv+"="+c.key)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	var err error
	p.Proc, err = agentproc.Start(name, cmd)
	require.NoError(t, err)
	t.Cleanup(func() {
		// By its PID; SIGKILL also ends a stopped process.
		if !p.Kill(10 * time.Second) {
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, p.PID)
		}
	})
	p.gossip, p.calls, err = agentproc.WaitStarted(context.Background(), p.Proc, p.log, procStartLimit)
	require.NoError(t, err)
	return p
}

// restart starts a new process for the agent at index i (whose process
// has exited) under the same name, joining the running agents.
func (c *procCluster) restart(i int, extra ...string) *agentProc {
	old := c.agents[i]
	require.False(c.t, old.Alive(), "%s must have exited before its restart", old.Name)
	args := append([]string{"-join", strings.Join(c.seeds(old.Name), ",")}, extra...)
	p := c.startAgent(old.Name, args...)
	c.agents[i] = p
	return p
}

// others returns the running agents but p.
func (c *procCluster) others(p *agentProc) []*agentProc {
	var out []*agentProc
	for _, q := range c.agents {
		if q != p && q.Alive() {
			out = append(out, q)
		}
	}
	return out
}

// clientStatus returns the client's status of instance id ("gone" when it
// does not know it).
func (c *procCluster) clientStatus(id string) string {
	for _, in := range c.client.Instances(procService) {
		if in.ID == id {
			return in.Status.String()
		}
	}
	return "gone"
}

// waitFor polls cond until it holds and returns how long that took; the
// test fails when limit passes first.
func (c *procCluster) waitFor(what string, limit time.Duration, cond func() bool) time.Duration {
	c.t.Helper()
	d, ok := poll(limit, cond)
	if !ok {
		c.t.Fatalf("not within %v: %s", limit, what)
	}
	return d
}

// cond is a condition a test waits for.
type cond struct {
	what  string
	holds func() bool
}

// measure polls every condition every 5ms until all have held and returns,
// for each, how long after ref it was first seen to hold; the test fails
// when waitLimit passes first, naming those that never held.
func (c *procCluster) measure(ref time.Time, conds ...cond) []time.Duration {
	c.t.Helper()
	out := make([]time.Duration, len(conds))
	seen := make([]bool, len(conds))
	left := len(conds)
	deadline := time.Now().Add(waitLimit)
	for {
		for i, cd := range conds {
			if !seen[i] && cd.holds() {
				seen[i], out[i] = true, time.Since(ref)
				left--
			}
		}
		if left == 0 {
			return out
		}
		if time.Now().After(deadline) {
			for i, cd := range conds {
				if !seen[i] {
					c.t.Errorf("not within %v: %s", waitLimit, cd.what)
				}
			}
			c.t.FailNow()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// poll polls cond every 5ms until it holds (true and the time it took) or
// limit passes (false).
func poll(limit time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			return time.Since(start), false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start), true
}

// callResult is one call the driver made.
type callResult struct {
	start    time.Time
	latency  time.Duration
	instance string // who answered; "" on error
	err      error
}

func (r callResult) end() time.Time { return r.start.Add(r.latency) }

// driver calls procService's whoami through a node with CallWithFailover
// at procRate calls a second and keeps every outcome.
type driver struct {
	node    *aegis.Node
	stopCh  chan struct{}
	stopped chan struct{}
	calls   sync.WaitGroup

	mu      sync.Mutex // guards results
	results []callResult
}

// startDriver starts calling through node; it is stopped when the test
// ends if it has not been before.
func startDriver(t *testing.T, node *aegis.Node) *driver {
	d := &driver{node: node, stopCh: make(chan struct{}), stopped: make(chan struct{})}
	go d.run()
	t.Cleanup(d.stop)
	return d
}

func (d *driver) run() {
	defer close(d.stopped)
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var started int64
	for {
		select {
		case <-d.stopCh:
			d.calls.Wait()
			return
		case now := <-tick.C:
			for due := int64(now.Sub(start).Seconds() * procRate); started < due; started++ {
				d.calls.Add(1)
				go d.call()
			}
		}
	}
}

func (d *driver) call() {
	defer d.calls.Done()
	ctx, cancel := context.WithTimeout(context.Background(), procCallTimeout)
	defer cancel()
	start := time.Now()
	out, err := d.node.CallWithFailover(ctx, procService, whoamiMethod, nil)
	r := callResult{start: start, latency: time.Since(start), err: err}
	if err == nil {
		r.instance = answeringInstance(out)
	}
	d.mu.Lock()
	d.results = append(d.results, r)
	d.mu.Unlock()
}

// stop stops starting calls and waits for those in flight.
func (d *driver) stop() {
	select {
	case <-d.stopCh:
	default:
		close(d.stopCh)
	}
	<-d.stopped
}

// between returns the finished calls that started in [from, to).
func (d *driver) between(from, to time.Time) []callResult {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []callResult
	for _, r := range d.results {
		if !r.start.Before(from) && r.start.Before(to) {
			out = append(out, r)
		}
	}
	return out
}

// all returns every finished call.
func (d *driver) all() []callResult { return d.between(time.Time{}, time.Now().Add(time.Hour)) }

// answered reports when a call that started at or after since was first
// answered by instance id.
func (d *driver) answered(id string, since time.Time) (time.Time, bool) {
	var first time.Time
	for _, r := range d.between(since, time.Now().Add(time.Hour)) {
		if r.err == nil && r.instance == id && (first.IsZero() || r.end().Before(first)) {
			first = r.end()
		}
	}
	return first, !first.IsZero()
}

// waitCalls waits until n more calls than now have finished.
func (d *driver) waitCalls(t *testing.T, n int) {
	t.Helper()
	d.mu.Lock()
	want := len(d.results) + n
	d.mu.Unlock()
	_, ok := poll(time.Duration(n)*time.Second/procRate+10*time.Second, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.results) >= want
	})
	require.True(t, ok, "%d more calls did not finish", n)
}

// callStats summarises calls.
type callStats struct {
	calls, errors int
	p50, p99, max time.Duration
	samples       []string // the first few distinct error texts
}

func summarize(rs []callResult) callStats {
	s := callStats{calls: len(rs)}
	lat := make([]time.Duration, 0, len(rs))
	for _, r := range rs {
		lat = append(lat, r.latency)
		if r.err != nil {
			s.errors++
			if msg := r.err.Error(); len(s.samples) < 3 && !slices.Contains(s.samples, msg) {
				s.samples = append(s.samples, msg)
			}
		}
	}
	slices.Sort(lat)
	s.p50, s.p99, s.max = percentile(lat, 0.5), percentile(lat, 0.99), percentile(lat, 1)
	return s
}

func (s callStats) String() string {
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	out := fmt.Sprintf("%d calls, %d errors, p50 %v, p99 %v, max %v", s.calls, s.errors, r(s.p50), r(s.p99), r(s.max))
	if len(s.samples) > 0 {
		out += fmt.Sprintf("; errors: %q", s.samples)
	}
	return out
}

// secs formats d in seconds with millisecond precision.
func secs(d time.Duration) string { return fmt.Sprintf("%.3fs", math.Round(d.Seconds()*1000)/1000) }
