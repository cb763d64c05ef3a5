package aegis

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/internal/wire"
)

func TestConverge(t *testing.T) {
	for _, n := range []int{3, 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			c := newCluster(t, n, false)
			c.waitConverged(20 * time.Second)
			for _, nd := range c.nodes {
				require.Equal(t, []string{"svc"}, nd.Services())
				insts := nd.Instances("svc")
				require.Len(t, insts, n)
				for i, in := range insts {
					require.Equal(t, StatusHealthy, in.Status)
					require.NotEmpty(t, in.Addr)
					require.False(t, in.LastHeartbeat.IsZero())
					if i > 0 {
						require.Less(t, insts[i-1].ID, in.ID, "stable order")
					}
				}
			}
		})
	}
}

// advance moves the fake clock in heartbeat-sized steps and waits after each
// until every node has received every live instance's newest heartbeat, so
// that gossip delay never turns into heartbeat age.
func (c *cluster) advance(total time.Duration, paused map[int]bool) {
	c.t.Helper()
	step := 5 * time.Second
	for total > 0 {
		d := min(step, total)
		total -= d
		c.clk.Advance(d)
		// Heartbeat ticks fall on start + k×HeartbeatInterval.
		hb := c.nodes[0].cfg.HeartbeatInterval
		lastTick := c.start.Add(c.clk.Now().Sub(c.start) / hb * hb)
		testutil.Eventually(c.t, 10*time.Second, func() bool {
			for _, nd := range c.nodes {
				for i, reg := range c.regs {
					if paused[i] {
						continue
					}
					in, ok := nd.reg.get(reg.key)
					if !ok || in.LastHeartbeat.Before(lastTick) {
						return false
					}
				}
			}
			return true
		}, "heartbeats of live instances reach every node (%s): %s", c.clk, lazy(c.describe))
		for _, nd := range c.nodes {
			nd.reg.check()
		}
	}
}

func TestHeartbeatTimeoutAndRecovery(t *testing.T) {
	c := newCluster(t, 3, true)
	c.waitConverged(10 * time.Second)
	logs := make([]*eventLog, len(c.nodes))
	for i, nd := range c.nodes {
		logs[i] = subscribeLog(nd)
	}
	silent := c.regs[0]
	silent.PauseHeartbeats()
	paused := map[int]bool{0: true}

	// 30 s after its last heartbeat the instance is still healthy: the
	// timeout is "older than", not "as old as".
	c.advance(30*time.Second, paused)
	for _, nd := range c.nodes {
		require.Equal(t, StatusHealthy, status(nd, "inst-0"), "node %s at exactly the timeout", nd.Name())
		require.Len(t, nd.HealthyInstances("svc"), 3)
	}
	c.advance(time.Second, paused)
	for i, nd := range c.nodes {
		require.Equal(t, StatusUnhealthy, status(nd, "inst-0"), "node %s after the timeout", nd.Name())
		ids := []string{}
		for _, in := range nd.HealthyInstances("svc") {
			ids = append(ids, in.ID)
		}
		require.Equal(t, []string{"inst-1", "inst-2"}, ids)
		require.Len(t, nd.Instances("svc"), 3, "unhealthy instances stay visible")
		testutil.Eventually(t, 5*time.Second, func() bool {
			return logs[i].has(EventStatusChanged, "inst-0", StatusUnhealthy, "heartbeat-timeout")
		}, "heartbeat-timeout event on %s", nd.Name())
		// the others never flapped
		require.False(t, logs[i].has(EventStatusChanged, "inst-1", StatusUnhealthy, "heartbeat-timeout"))
	}

	silent.ResumeHeartbeats()
	for i, nd := range c.nodes {
		testutil.Eventually(t, 10*time.Second, func() bool {
			return status(nd, "inst-0") == StatusHealthy &&
				logs[i].has(EventStatusChanged, "inst-0", StatusHealthy, "recovered")
		}, "inst-0 recovered on %s", nd.Name())
	}
}

func TestSelfReportedStatus(t *testing.T) {
	c := newCluster(t, 3, false)
	c.waitConverged(10 * time.Second)
	c.regs[1].SetStatus(StatusDraining)
	for _, nd := range c.nodes {
		testutil.Eventually(t, 10*time.Second, func() bool {
			return status(nd, "inst-1") == StatusDraining && len(nd.HealthyInstances("svc")) == 2
		}, "draining seen on %s", nd.Name())
	}
	// Degraded instances are routable only when no healthy one is left.
	c.regs[0].SetStatus(StatusDegraded)
	c.regs[2].SetStatus(StatusDegraded)
	for _, nd := range c.nodes {
		testutil.Eventually(t, 10*time.Second, func() bool {
			h := nd.HealthyInstances("svc")
			return len(h) == 2 && h[0].Status == StatusDegraded
		}, "degraded fallback on %s", nd.Name())
	}
	c.regs[2].SetStatus(StatusHealthy)
	for _, nd := range c.nodes {
		testutil.Eventually(t, 10*time.Second, func() bool {
			h := nd.HealthyInstances("svc")
			return len(h) == 1 && h[0].ID == "inst-2"
		}, "healthy preferred on %s", nd.Name())
	}
}

func TestAbruptShutdownMarksNodeFailed(t *testing.T) {
	c := newCluster(t, 4, false)
	c.waitConverged(10 * time.Second)
	logs := []*eventLog{subscribeLog(c.nodes[0]), subscribeLog(c.nodes[1]), subscribeLog(c.nodes[2])}
	start := time.Now()
	require.NoError(t, c.nodes[3].Shutdown())
	for i, nd := range c.nodes[:3] {
		testutil.Eventually(t, 15*time.Second, func() bool {
			return status(nd, "inst-3") == StatusUnhealthy &&
				logs[i].has(EventStatusChanged, "inst-3", StatusUnhealthy, "node-failed")
		}, "inst-3 node-failed on %s", nd.Name())
	}
	t.Logf("node-failed everywhere after %v (heartbeat timeout is %v)", time.Since(start), DefaultConfig().HeartbeatTimeout)
	require.Less(t, time.Since(start), DefaultConfig().HeartbeatTimeout)
}

func TestGracefulLeaveDeregisters(t *testing.T) {
	c := newCluster(t, 4, false)
	c.waitConverged(10 * time.Second)
	logs := []*eventLog{subscribeLog(c.nodes[0]), subscribeLog(c.nodes[1]), subscribeLog(c.nodes[2])}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.nodes[3].Leave(ctx))
	require.NoError(t, c.nodes[3].Leave(ctx), "Leave is idempotent")
	require.NoError(t, c.nodes[3].Shutdown(), "Shutdown after Leave")
	for i, nd := range c.nodes[:3] {
		testutil.Eventually(t, 10*time.Second, func() bool {
			// Leave drains first, so the draining status may arrive
			// before the tombstone.
			for _, st := range []Status{StatusHealthy, StatusDraining} {
				if status(nd, "inst-3") == -1 && logs[i].has(EventDeregistered, "inst-3", st, "left") {
					return true
				}
			}
			return false
		}, "inst-3 left on %s: status %v, events %v", nd.Name(), lazy(func() string { return fmt.Sprint(status(nd, "inst-3")) }), logs[i])
		require.False(t, logs[i].has(EventDeregistered, "inst-3", StatusHealthy, "deregistered") ||
			logs[i].has(EventDeregistered, "inst-3", StatusDraining, "deregistered"), "a graceful leave is reported as left, never as deregistered")
	}
	_, err := c.nodes[3].Register(context.Background(), Service{Name: "svc", Handler: echoHandler})
	require.ErrorIs(t, err, ErrShutdown)
	// Peers know it left rather than failed: not listed, not reconnected to.
	testutil.Eventually(t, 10*time.Second, func() bool { return len(c.nodes[0].Members()) == 3 }, "node-03 gone from Members: %v", lazy(func() string { return fmt.Sprint(c.nodes[0].Members()) }))
	require.Zero(t, c.nodes[0].Stats().Reconnects)
}

func TestPartitionAndHeal(t *testing.T) {
	c := newCluster(t, 4, false, func(cfg *Config) {
		cfg.HeartbeatInterval = 200 * time.Millisecond
		cfg.HeartbeatTimeout = 2 * time.Second
	})
	c.waitConverged(10 * time.Second)
	addrs := func(nodes ...*Node) []string {
		var out []string
		for _, nd := range nodes {
			out = append(out, nd.Addr(), nd.tr.CallAddr())
		}
		return out
	}
	c.net.Partition(addrs(c.nodes[3]), addrs(c.nodes[:3]...))
	for _, nd := range c.nodes[:3] {
		testutil.Eventually(t, 15*time.Second, func() bool { return status(nd, "inst-3") == StatusUnhealthy }, "inst-3 unhealthy on %s", nd.Name())
	}
	testutil.Eventually(t, 15*time.Second, func() bool {
		return len(c.nodes[3].HealthyInstances("svc")) == 1
	}, "the isolated node sees the others unhealthy")
	c.net.Heal()
	c.waitConverged(30 * time.Second)
}

func TestLateJoinerLearnsEverything(t *testing.T) {
	c := newCluster(t, 5, false)
	c.waitConverged(10 * time.Second)
	late := c.addNode()
	c.waitConverged(10 * time.Second)
	require.Len(t, late.Instances("svc"), 6)
}

func TestShutdownWhileRegistering(t *testing.T) {
	c := newCluster(t, 2, false)
	nd := c.nodes[1]
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				_, err := nd.Register(context.Background(), Service{Name: "load", Handler: echoHandler})
				if err != nil {
					require.ErrorIs(t, err, ErrShutdown)
					return
				}
			}
		}()
	}
	wg.Add(2)
	go func() { defer wg.Done(); _ = nd.Leave(context.Background()) }()
	go func() { defer wg.Done(); _ = nd.Shutdown() }()
	wg.Wait()
	require.NoError(t, nd.Shutdown())
	require.NoError(t, nd.Leave(context.Background()))
}

func TestReap(t *testing.T) {
	c := newCluster(t, 2, true, func(cfg *Config) { cfg.ReapTimeout = time.Minute })
	c.waitConverged(10 * time.Second)
	log0 := subscribeLog(c.nodes[0])
	c.regs[1].PauseHeartbeats()
	c.advance(31*time.Second, map[int]bool{1: true})
	require.Equal(t, StatusUnhealthy, status(c.nodes[0], "inst-1"), c.describe())
	c.advance(61*time.Second, map[int]bool{1: true})
	testutil.Eventually(t, 5*time.Second, func() bool {
		return status(c.nodes[0], "inst-1") == -1 && log0.has(EventDeregistered, "inst-1", StatusUnhealthy, "reaped")
	}, "reaped")
}

// lazy formats as the result of calling it, so a failure message shows the
// state at the time of failure rather than when Eventually was called.
type lazy func() string

func (l lazy) String() string { return l() }

func (c *cluster) describe() string {
	out := ""
	for _, nd := range c.nodes {
		out += fmt.Sprintf("\n%s (sent %d, received %d, gossip %d, hbq %d, rq %d, members %d):", nd.Name(), nd.Stats().HeartbeatsSent,
			nd.Stats().HeartbeatsReceived, nd.Stats().GossipReceived, nd.gossip.hbQueue.Len(), nd.gossip.queue.Len(), nd.gossip.ml.NumMembers())
		for _, in := range nd.Instances("svc") {
			out += fmt.Sprintf(" %s(%s, hb %s)", in.ID, in.Status, in.LastHeartbeat.Format("15:04:05.000"))
		}
	}
	return out
}

// TestOwnInstancesNeverTimeOutHere: a node that was stopped (SIGSTOP, a long
// pause) for longer than the timeout does not declare its own instances
// timed out when it resumes; one whose heartbeats are paused does.
func TestOwnInstancesNeverTimeOutHere(t *testing.T) {
	c := newCluster(t, 1, true)
	nd := c.nodes[0]
	k := c.regs[0].key
	stale := func() {
		nd.reg.mu.Lock()
		nd.reg.entries[k].lastHeartbeat = c.clk.Now().Add(-time.Hour)
		nd.reg.mu.Unlock()
	}
	stale()
	nd.reg.check()
	require.Equal(t, StatusHealthy, status(nd, "inst-0"), "own beating instance after a long pause")
	c.regs[0].PauseHeartbeats()
	stale()
	nd.reg.check()
	require.Equal(t, StatusUnhealthy, status(nd, "inst-0"), "own instance with paused heartbeats")
}

// TestEventsSayWhy: an instance learned of after its node was declared
// dead starts unhealthy with reason node-failed, and a restarted node's
// instance at a new address is not taken for the dead one's.
func TestEventsSayWhy(t *testing.T) {
	c := newCluster(t, 1, false)
	nd := c.nodes[0]
	log := subscribeLog(nd)
	nd.reg.nodeFailed("gone", "10.1.1.1:7000")
	old := wire.Record{Service: "late", ID: "old", Node: "gone", Addr: "10.1.1.1:7000", Incarnation: 1, Heartbeats: true}
	fresh := wire.Record{Service: "late", ID: "new", Node: "gone", Addr: "10.1.1.2:7000", Incarnation: 2, Heartbeats: true}
	require.True(t, nd.reg.apply(&old, "registered"))
	require.True(t, nd.reg.apply(&fresh, "registered"))
	testutil.Eventually(t, 5*time.Second, func() bool {
		return log.has(EventRegistered, "old", StatusUnhealthy, "node-failed") && log.has(EventRegistered, "new", StatusHealthy, "registered")
	}, "events: %s", log)
}

func TestStalled(t *testing.T) {
	for _, tc := range []struct {
		gap, interval, want time.Duration
		ok                  bool
	}{
		{time.Second, time.Second, 0, false},
		{2 * time.Second, time.Second, time.Second, false}, // exactly the threshold late
		{3 * time.Second, time.Second, 2 * time.Second, true},
		{41 * time.Second, time.Second, 40 * time.Second, true},
	} {
		got, ok := stalled(tc.gap, tc.interval)
		require.Equal(t, tc.ok, ok, "%v", tc)
		require.Equal(t, tc.want, got, "%v", tc)
	}
}

// TestStallIsForgiven: a health check that runs long after it was due
// (this process was stopped) does not time out instances whose heartbeats
// it could not have read meanwhile.
func TestStallIsForgiven(t *testing.T) {
	c := newCluster(t, 2, false, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.HeartbeatTimeout = time.Second, 3*time.Second
		cfg.HealthCheckInterval = time.Hour // only this test's checks run
	})
	c.waitConverged(10 * time.Second)
	nd := c.nodes[0]
	k := c.regs[1].key
	c.regs[1].PauseHeartbeats() // no fresh heartbeat may hide the verdicts
	nd.reg.mu.Lock()
	nd.reg.entries[k].lastHeartbeat = time.Now().Add(-40 * time.Second) // as if the last one came before a 40 s stop
	nd.reg.mu.Unlock()
	stall, ok := stalled(40*time.Second+time.Hour, time.Hour)
	require.True(t, ok)
	require.Equal(t, 40*time.Second, stall)
	nd.reg.forgive(stall)
	nd.reg.check()
	require.Equal(t, StatusHealthy, status(nd, "inst-1"), "the stall is forgiven")
	nd.reg.mu.Lock()
	nd.reg.entries[k].lastHeartbeat = time.Now().Add(-40 * time.Second)
	nd.reg.mu.Unlock()
	nd.reg.check()
	require.Equal(t, StatusUnhealthy, status(nd, "inst-1"), "without a stall the same age times out")
}

// TestWholeClusterLeaves: every node of a cluster leaves in turn, the last
// ones with nobody left to tell, without an error and within its ctx.
func TestWholeClusterLeaves(t *testing.T) {
	c := newCluster(t, 4, false)
	c.waitConverged(10 * time.Second)
	for _, nd := range c.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		require.NoError(t, nd.Leave(ctx), nd.Name())
		require.Less(t, time.Since(start), 2500*time.Millisecond, "%s left within its ctx", nd.Name())
		cancel()
	}
}
