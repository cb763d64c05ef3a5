//go:build unix

// This file holds the process-level fault tests: real agent processes on
// loopback, a client node in the test calling them with CallWithFailover at
// a fixed rate, and one agent killed, stopped, terminated or restarted.
// Each scenario runs a fresh cluster and logs what the callers saw during
// the fault and how long detection and recovery took.

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/agentproc"
)

// Bounds the scenarios assert. Detection: an instance whose process is
// killed or stopped is marked unhealthy by every node within the
// heartbeat timeout (1s) plus a health check (100ms) and gossip, or sooner
// through memberlist's failure detector; detectBound leaves room for a
// loaded two-core machine. Recovery: a resumed or restarted instance is
// healthy and answering within recoverBound.
const (
	detectBound  = 3 * time.Second
	recoverBound = 2 * time.Second
	goneBound    = 2 * time.Second // a leaving instance gone from every node
	// waitLimit bounds every wait of a scenario, so a measurement that
	// exceeds its bound is still taken and reported.
	waitLimit = 45 * time.Second
)

func TestProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped with -short: the process-level fault tests build the aegis binary and run clusters of real processes on loopback for about half a minute")
	}
	bin := buildAgent(t, t.TempDir())
	t.Run("load-command", func(t *testing.T) { testLoadCommand(t, bin) })
	t.Run("kill", func(t *testing.T) { testKill(t, bin) })
	t.Run("stop-cont", func(t *testing.T) { testStopCont(t, bin) })
	t.Run("term", func(t *testing.T) { testTerm(t, bin) })
	t.Run("restart-same-port", func(t *testing.T) { testRestart(t, bin, false) })
	t.Run("restart-new-port", func(t *testing.T) { testRestart(t, bin, true) })
	t.Run("kill-active", func(t *testing.T) { testKillActive(t, bin) })
}

// testKillActive: three agents serve role group "ledger" (n1 active, n2
// and n3 standbys, majority of 3); kill -9 of the active's process. Every
// node promotes n2's instance, callers see no error, and answers come in
// epoch order, one instance per epoch.
func testKillActive(t *testing.T, bin string) {
	const ledger = "ledger"
	c := newProcClusterWith(t, bin, 3, func(i int) []string {
		role := map[bool]string{true: "active", false: "standby"}[i == 0]
		return []string{"-serve", "echo:" + ledger + ":" + role, "-priority", fmt.Sprint(3 - i), "-group-size", "3"}
	})
	activeOf := func() string {
		v := c.client.Roles(ledger)
		if len(v) != 1 || v[0].Active == nil || len(v[0].Standbys) != 2 {
			return ""
		}
		return v[0].Active.ID
	}
	c.waitFor("the client sees the ledger group with n1 active", 15*time.Second, func() bool { return activeOf() == ledger+"-n1" })

	type answer struct {
		id    string
		epoch uint64
	}
	var mu sync.Mutex
	var answers []answer
	var failed []error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), procCallTimeout)
				out, err := c.client.CallWithFailover(ctx, ledger, whoamiMethod, nil)
				cancel()
				var who identity
				if err == nil {
					err = json.Unmarshal(out, &who)
				}
				mu.Lock()
				if err != nil {
					failed = append(failed, err)
				} else {
					answers = append(answers, answer{who.Instance, who.Epoch})
				}
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	fault := time.Now()
	c.agents[0].signal(t, syscall.SIGKILL)
	took := c.waitFor("the client sees n2's instance promoted", 15*time.Second, func() bool { return activeOf() == ledger+"-n2" })
	for _, p := range c.agents[1:] {
		c.waitFor(p.Name+" logs the promotion", 10*time.Second, func() bool {
			return len(p.log.Find(func(l agentproc.Line) bool {
				return l.Str("event") == "role-changed" && l.Str("instance") == ledger+"-n2" && l.Str("role") == "active" && !l.At.Before(fault)
			})) > 0
		})
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("kill -9 of the active's process: promoted on the client %s after the kill; %d calls answered, %d failed", secs(took), len(answers), len(failed))
	require.Empty(t, failed, "CallWithFailover returned errors to callers")
	owner := map[uint64]string{}
	for _, a := range answers {
		require.NotZero(t, a.epoch, "an active's answer carries its epoch")
		if o, ok := owner[a.epoch]; ok {
			require.Equal(t, o, a.id, "two instances answered with epoch %d", a.epoch)
		}
		owner[a.epoch] = a.id
	}
	require.Len(t, owner, 2, "answers from the old and the new active only: %v", owner)

	// What an operator sees: the new active with its epoch.
	out := c.runCLI("services", ledger, "-join", c.agents[1].gossip, "-gossip", "local").ok(t).stdout
	assert.Regexp(t, `(?m)^`+ledger+`\s+`+ledger+`-n2\s+healthy\s+active@\d+\s`, out)
	assert.Regexp(t, `(?m)^`+ledger+`\s+`+ledger+`-n3\s+healthy\s+standby\s`, out)

	// The old active's agent, started again with the same flags (it asks
	// to be active), comes back as a standby: the group's active has a
	// newer epoch.
	c.restart(0, "-serve", "echo:"+ledger+":active", "-priority", "3", "-group-size", "3")
	c.waitFor("the restarted agent's instance is a healthy standby and n2's stays active", 15*time.Second, func() bool {
		v := c.client.Roles(ledger)
		if len(v) != 1 || v[0].Active == nil || v[0].Active.ID != ledger+"-n2" {
			return false
		}
		for _, sb := range v[0].Standbys {
			if sb.ID == ledger+"-n1" && sb.Status == aegis.StatusHealthy && sb.Role == aegis.RoleStandby {
				return true
			}
		}
		return false
	})
}

// scenario is one fresh cluster with the driver calling it; the victim is
// agent n3.
type scenario struct {
	c      *procCluster
	d      *driver
	vi     int        // index of the victim in c.agents
	victim *agentProc // its process before the fault
	id     string     // its instance
	fault  time.Time  // when the fault was injected
}

// newScenario starts a cluster and the driver, and waits until every
// instance has answered calls and half a second of calls has finished.
func newScenario(t *testing.T, bin string) *scenario {
	c := newProcCluster(t, bin, procAgents)
	s := &scenario{c: c, d: startDriver(t, c.client), vi: 2}
	s.victim, s.id = c.agents[s.vi], instanceID(c.agents[s.vi].Name)
	begin := time.Now()
	c.waitFor("every instance answers calls", 10*time.Second, func() bool {
		for _, p := range c.agents {
			if _, ok := s.d.answered(instanceID(p.Name), begin); !ok {
				return false
			}
		}
		return true
	})
	s.d.waitCalls(t, procRate/2)
	return s
}

// inject sends sig to the victim and records the time.
func (s *scenario) inject(t *testing.T, sig syscall.Signal) {
	s.fault = time.Now()
	s.victim.signal(t, sig)
}

// othersSee reports whether every running agent but the victim's current
// process logged, since s.fault, a newest event leaving the victim's
// instance in one of states.
func (s *scenario) othersSee(states ...string) bool {
	for _, q := range s.c.others(s.c.agents[s.vi]) {
		st := q.instanceState(s.id, s.fault)
		ok := false
		for _, want := range states {
			ok = ok || st == want
		}
		if !ok {
			return false
		}
	}
	return true
}

// finish lets a second of calls finish after the fault ended, stops the
// driver, logs what the callers saw and asserts that none of their calls
// failed.
func (s *scenario) finish(t *testing.T, faultEnd time.Time) {
	s.d.waitCalls(t, procRate)
	s.d.stop()
	before := summarize(s.d.between(time.Time{}, s.fault))
	during := summarize(s.d.between(s.fault, faultEnd))
	all := summarize(s.d.all())
	t.Logf("callers before the fault: %v", before)
	t.Logf("callers during the fault (%s): %v", secs(faultEnd.Sub(s.fault)), during)
	t.Logf("callers in all: %v", all)
	assert.Zero(t, all.errors, "CallWithFailover returned errors to callers: %v", all)
}

// testKill: kill -9 of one agent. Every node marks its instance unhealthy
// within detectBound and callers see no error.
func testKill(t *testing.T, bin string) {
	s := newScenario(t, bin)
	s.inject(t, syscall.SIGKILL)
	m := s.c.measure(s.fault,
		cond{"the client marks the killed instance unhealthy", func() bool { return s.c.clientStatus(s.id) != "healthy" }},
		cond{"every other agent marks the killed instance unhealthy", func() bool { return s.othersSee("unhealthy", "gone") }})
	client, all := m[0], m[1]
	t.Logf("kill -9 of %s: unhealthy on the client after %s, on every other agent after %s", s.victim.Name, secs(client), secs(all))
	assert.LessOrEqual(t, max(client, all), detectBound, "detection of a killed agent")
	s.finish(t, s.fault.Add(max(client, all)))
}

// testStopCont: SIGSTOP for twice the heartbeat timeout, then SIGCONT.
// Every node marks the instance unhealthy within detectBound; after
// SIGCONT every node marks it healthy again and it answers calls, within
// recoverBound; callers see no error.
func testStopCont(t *testing.T, bin string) {
	s := newScenario(t, bin)
	s.inject(t, syscall.SIGSTOP)
	m := s.c.measure(s.fault,
		cond{"the client marks the stopped instance unhealthy", func() bool { return s.c.clientStatus(s.id) != "healthy" }},
		cond{"every other agent marks the stopped instance unhealthy", func() bool { return s.othersSee("unhealthy") }},
		cond{"the agent stopped for twice the heartbeat timeout", func() bool { return time.Since(s.fault) >= 2*procHBTimeout }})
	client, all := m[0], m[1]
	t.Logf("SIGSTOP of %s: unhealthy on the client after %s, on every other agent after %s", s.victim.Name, secs(client), secs(all))
	assert.LessOrEqual(t, max(client, all), detectBound, "detection of a stopped agent")

	cont := time.Now()
	s.victim.signal(t, syscall.SIGCONT)
	m = s.c.measure(cont,
		cond{"the client marks the resumed instance healthy", func() bool { return s.c.clientStatus(s.id) == "healthy" }},
		cond{"the resumed instance answers calls", func() bool { _, ok := s.d.answered(s.id, cont); return ok }},
		cond{"every other agent marks the resumed instance healthy", func() bool {
			for _, q := range s.c.others(s.victim) {
				if q.instanceState(s.id, cont) != "healthy" {
					return false
				}
			}
			return true
		}})
	healthy, answered, allHealthy := m[0], m[1], m[2]
	if at, ok := s.d.answered(s.id, cont); ok {
		answered = at.Sub(cont) // when the call ended, not when it was seen
	}
	t.Logf("SIGCONT after %s stopped: healthy on the client after %s, answering calls after %s, healthy on every other agent after %s",
		secs(cont.Sub(s.fault)), secs(healthy), secs(answered), secs(allHealthy))
	assert.LessOrEqual(t, max(healthy, answered, allHealthy), recoverBound, "recovery of a resumed agent")
	s.finish(t, cont.Add(max(healthy, answered)))
}

// testTerm: SIGTERM makes the agent leave gracefully and exit 0; its
// instance is gone from every node within goneBound, and callers see no
// error.
func testTerm(t *testing.T, bin string) {
	s := newScenario(t, bin)
	s.inject(t, syscall.SIGTERM)
	m := s.c.measure(s.fault,
		cond{"the client forgets the instance", func() bool { return s.c.clientStatus(s.id) == "gone" }},
		cond{"every other agent forgets the instance", func() bool { return s.othersSee("gone") }},
		cond{"the agent exits", func() bool { return !s.victim.Alive() }})
	client, all, exited := m[0], m[1], m[2]
	code := s.victim.waitExit(t, time.Second)
	t.Logf("SIGTERM of %s: instance gone from the client after %s, from every other agent after %s; exited with status %d after %s",
		s.victim.Name, secs(client), secs(all), code, secs(exited))
	assert.Equal(t, 0, code, "exit status after a graceful leave")
	assert.LessOrEqual(t, max(client, all), goneBound, "a leaving instance gone from every node")
	s.finish(t, s.fault.Add(max(exited, client, all)))
	// A node that left is dropped from Members (not listed as failed).
	assert.Eventually(t, func() bool {
		for _, m := range s.c.client.Members() {
			if m.Name == s.victim.Name {
				return false
			}
		}
		return true
	}, goneBound, 10*time.Millisecond, "%s dropped from the client's Members after leaving", s.victim.Name)
}

// testRestart: kill -9 of one agent, restarted at once under the same name,
// on the same gossip and call ports or on new ones. The client must route
// to the new process (healthy, at its call address), calls must reach it
// and every agent must have it healthy at its address; callers see no
// error.
func testRestart(t *testing.T, bin string, newPorts bool) {
	s := newScenario(t, bin)
	old := s.victim
	s.inject(t, syscall.SIGKILL)
	old.waitExit(t, 5*time.Second)
	restart := time.Now()
	var p *agentProc
	if newPorts {
		p = s.c.restart(s.vi, "-bind", "127.0.0.1:"+strconv.Itoa(freePortExcept(t, old.gossip)))
		require.NotEqual(t, old.gossip, p.gossip)
		require.NotEqual(t, old.calls, p.calls)
	} else {
		p = s.c.restart(s.vi, "-bind", old.gossip, "-call-bind", old.calls)
		require.Equal(t, old.gossip, p.gossip)
		require.Equal(t, old.calls, p.calls)
	}
	started := time.Since(restart)
	m := s.c.measure(restart,
		cond{"the client routes to the restarted instance", func() bool {
			for _, in := range s.c.client.HealthyInstances(procService) {
				if in.ID == s.id && in.Addr == p.calls {
					return true
				}
			}
			return false
		}},
		// The old process is gone, so any answer from the instance after
		// the restart comes from the new one.
		cond{"the restarted instance answers calls", func() bool { _, ok := s.d.answered(s.id, restart); return ok }},
		cond{"every agent has the restarted instance healthy at its address", func() bool {
			for _, q := range s.c.agents {
				if !q.healthyAt(s.id, p.calls) {
					return false
				}
			}
			return true
		}})
	routed, answered, allHealthy := m[0], m[1], m[2]
	if at, ok := s.d.answered(s.id, restart); ok {
		answered = at.Sub(restart)
	}
	what := "the same ports"
	if newPorts {
		what = "new ports"
	}
	t.Logf("kill -9 of %s, restarted on %s (gossip %s -> %s): process up after %s; the client routes to it after %s, it answers calls after %s; every agent has it healthy after %s",
		old.Name, what, old.gossip, p.gossip, secs(started), secs(routed), secs(answered), secs(allHealthy))
	assert.LessOrEqual(t, max(routed, answered, allHealthy), recoverBound, "recovery of an agent restarted on %s", what)
	s.finish(t, restart.Add(max(routed, answered)))
}

// freePortExcept returns a loopback port the OS reports free for TCP and
// UDP, other than the port of addr.
func freePortExcept(t *testing.T, addr string) int {
	t.Helper()
	_, oldPort, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := l.Addr().(*net.TCPAddr).Port
		u, uerr := net.ListenPacket("udp", l.Addr().String())
		_ = l.Close()
		if uerr != nil {
			continue
		}
		_ = u.Close()
		if strconv.Itoa(port) != oldPort {
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// testLoadCommand runs 'aegis load' against two agents: it prints a report
// a second and a total, spreads calls over both instances and exits 0; it
// exits non-zero, naming the service, when the service does not exist.
func testLoadCommand(t *testing.T, bin string) {
	c := newProcCluster(t, bin, 2)
	common := []string{"-join", c.agents[0].gossip, "-gossip", "local", "-key", c.key, "-log-format", "json",
		"-heartbeat-interval", procHBInterval.String(), "-heartbeat-timeout", procHBTimeout.String()}
	runLoadProcess := func(args ...string) (int, []byte, *agentproc.Log) {
		cmd := exec.Command(bin, append(append([]string{"load"}, common...), args...)...)
		var stdout bytes.Buffer
		stderr := agentproc.NewLog()
		cmd.Stdout, cmd.Stderr = &stdout, stderr
		p, err := agentproc.Start("aegis load", cmd)
		require.NoError(t, err)
		t.Cleanup(func() { p.Kill(10 * time.Second) })
		if !p.Wait(30 * time.Second) {
			t.Fatalf("aegis load did not finish; stderr:\n%s", stderr.Tail(20))
		}
		return p.ExitCode(), stdout.Bytes(), stderr
	}

	code, out, stderr := runLoadProcess("-service", procService, "-rate", "50", "-duration", "2s")
	require.Equal(t, 0, code, "stderr:\n%s", stderr.Tail(20))
	var reports []agentproc.LoadReport
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var r agentproc.LoadReport
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r), "line %q", sc.Text())
		reports = append(reports, r)
	}
	require.GreaterOrEqual(t, len(reports), 2, "stdout:\n%s", out)
	assert.Equal(t, "second", reports[0].Report)
	total := reports[len(reports)-1]
	assert.Equal(t, "total", total.Report)
	assert.Equal(t, 100, total.Calls, "50 calls a second for 2s")
	assert.Zero(t, total.Errors, "%v", total.ErrorSamples)
	assert.Equal(t, 100, total.Instances[instanceID("n1")]+total.Instances[instanceID("n2")], "%v", total.Instances)
	assert.Positive(t, total.Instances[instanceID("n1")])
	assert.Positive(t, total.Instances[instanceID("n2")])
	assert.Positive(t, total.P99Ms)
	t.Logf("aegis load total: %s", bytes.TrimSpace(out[bytes.LastIndexByte(bytes.TrimSpace(out), '\n')+1:]))

	code, _, stderr = runLoadProcess("-service", "nope", "-wait", "300ms")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr.Tail(5), `aegis load: no healthy instance of service "nope" within -wait 300ms`)
}
