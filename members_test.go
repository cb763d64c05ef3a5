package aegis

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

func TestFailedNodesDue(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	f := failedNodes{m: map[string]failedNode{}}
	f.add("b", "10.0.0.2:7946", start)
	f.add("a", "10.0.0.1:7946", start.Add(time.Minute))
	require.Equal(t, []string{"10.0.0.1:7946", "10.0.0.2:7946"}, f.due(start.Add(time.Hour), time.Hour), "both within the timeout, by name")
	require.Equal(t, []string{"10.0.0.1:7946"}, f.due(start.Add(time.Hour+time.Nanosecond), time.Hour), "b forgotten")
	require.Equal(t, []string{"10.0.0.1:7946"}, f.due(start.Add(time.Hour+time.Minute), time.Hour), "a at exactly its timeout")
	require.Empty(t, f.due(start.Add(2*time.Hour), time.Hour))
	f.add("c", "10.0.0.3:7946", start)
	f.remove("c")
	require.Empty(t, f.due(start, time.Hour))
}

// TestReconnectRunsOnTheNodeClock: rejoin attempts to a failed node follow
// the node's clock, one per ReconnectInterval, and stop once
// ReconnectTimeout has passed since the failure.
func TestReconnectRunsOnTheNodeClock(t *testing.T) {
	c := newCluster(t, 3, true)
	c.waitConverged(10 * time.Second)
	require.NoError(t, c.nodes[2].Shutdown())
	watcher := c.nodes[0]
	testutil.Eventually(t, 20*time.Second, func() bool {
		watcher.gossip.failed.mu.Lock()
		defer watcher.gossip.failed.mu.Unlock()
		_, ok := watcher.gossip.failed.m[c.nodes[2].Name()]
		return ok
	}, "node-02 failed on node-00")
	require.Zero(t, watcher.Stats().Reconnects, "nothing before the node's clock moves")

	interval := watcher.cfg.Gossip.ReconnectInterval
	for want := uint64(1); want <= 3; want++ {
		c.clk.Advance(interval)
		testutil.Eventually(t, 5*time.Second, func() bool { return watcher.Stats().Reconnects == want }, "reconnect %d", want)
	}
	// Past the reconnect timeout the failed node is forgotten.
	c.clk.Advance(watcher.cfg.Gossip.ReconnectTimeout)
	testutil.Eventually(t, 5*time.Second, func() bool {
		watcher.gossip.failed.mu.Lock()
		defer watcher.gossip.failed.mu.Unlock()
		return len(watcher.gossip.failed.m) == 0
	}, "node-02 forgotten after ReconnectTimeout")
	c.clk.Advance(interval)
	require.Never(t, func() bool { return watcher.Stats().Reconnects != 3 }, 300*time.Millisecond, 10*time.Millisecond,
		"no attempts after the timeout")
}

func TestMembers(t *testing.T) {
	c := newCluster(t, 3, false)
	c.waitConverged(10 * time.Second)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(c.nodes[0].Members()) == 3 }, "three members")
	ms := c.nodes[0].Members()
	for i, m := range ms {
		require.Equal(t, c.nodes[i].Name(), m.Name)
		require.Equal(t, c.nodes[i].Addr(), m.Addr)
		require.Equal(t, c.nodes[i].tr.CallAddr(), m.CallAddr)
		require.Equal(t, MemberAlive, m.State)
	}
	require.NoError(t, c.nodes[2].Shutdown())
	testutil.Eventually(t, 20*time.Second, func() bool {
		ms := c.nodes[0].Members()
		return len(ms) == 3 && ms[2].State == MemberFailed
	}, "node-02 failed in Members")
	require.Equal(t, "failed", MemberFailed.String())
}

// TestRestartOnNewAddressTakesOver: a node restarted under its name on a
// new address, after its crash was detected, is healthy and routed to
// everywhere within seconds (memberlist lets it reclaim the dead name).
func TestRestartOnNewAddressTakesOver(t *testing.T) {
	c := newCluster(t, 3, false)
	c.waitConverged(10 * time.Second)
	require.NoError(t, c.nodes[2].Shutdown())
	for _, nd := range c.nodes[:2] {
		testutil.Eventually(t, 20*time.Second, func() bool { return status(nd, "inst-2") == StatusUnhealthy }, "crash seen by %s", nd.Name())
	}
	start := time.Now()
	nd := c.restartNode2At("10.0.9.9:7946")
	c.waitRoutedAt(10*time.Second, nd)
	t.Logf("healthy and routed everywhere %v after the restart", time.Since(start))
	// A peer that still gossips the old address's death can mark the name
	// failed once more right after the takeover, until the new node
	// refutes it; calls to the instance then succeed within moments.
	testutil.Eventually(t, 10*time.Second, func() bool {
		out, err := c.nodes[0].Call(context.Background(), "svc", "x", []byte("hi"), WithExclude("inst-0", "inst-1"))
		return err == nil && string(out) == "hi"
	}, "the restarted instance answers calls")
}

// TestSecondLiveNodeWithANameInUseIsRefused: Join fails with
// ErrNameConflict naming the other node, and the cluster keeps the first.
func TestSecondLiveNodeWithANameInUseIsRefused(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	cfg := testConfig(c.net, 9, nil)
	cfg.NodeName = c.nodes[1].Name() // node-01's name, another address
	dup, err := New(cfg)
	require.NoError(t, err)
	defer dup.Shutdown()
	_, err = dup.Join(context.Background(), c.nodes[0].Addr())
	require.ErrorIs(t, err, ErrNameConflict)
	require.Contains(t, err.Error(), c.nodes[1].Addr(), "the error names the live node")
	_, err = dup.Register(context.Background(), Service{Name: "svc", Handler: echoHandler})
	require.ErrorIs(t, err, ErrShutdown, "the duplicate stopped")
	require.Equal(t, StatusHealthy, status(c.nodes[0], "inst-1"))
	out, err := c.nodes[0].Call(context.Background(), "svc", "x", []byte("hi"), WithExclude("inst-0"))
	require.NoError(t, err)
	require.Equal(t, "hi", string(out))
}

// TestRestartBeforeCrashDetected: a node restarted on a new address before
// anyone noticed its crash is not refused (its previous life does not
// answer), and its instance is routed to at the new address.
func TestRestartBeforeCrashDetected(t *testing.T) {
	c := newCluster(t, 3, false)
	c.waitConverged(10 * time.Second)
	require.NoError(t, c.nodes[2].Shutdown())
	start := time.Now()
	nd := c.restartNode2At("10.0.9.7:7946")
	testutil.Eventually(t, 15*time.Second, func() bool {
		out, err := c.nodes[0].Call(context.Background(), "svc", "x", []byte("hi"), WithExclude("inst-0", "inst-1"))
		return err == nil && string(out) == "hi"
	}, "the restarted instance answers calls")
	t.Logf("answering %v after the restart", time.Since(start))
	c.waitRoutedAt(15*time.Second, nd)
	t.Logf("healthy everywhere %v after the restart", time.Since(start))
	// Meanwhile memberlist declares the previous life's address dead; the
	// new instance must not be taken for it.
	require.Never(t, func() bool { return status(c.nodes[0], "inst-2") != StatusHealthy }, 4*time.Second, 20*time.Millisecond,
		"inst-2 stays healthy while the old address is found dead")
}

// restartNode2At starts node-02 again, under its name, at the in-memory
// address addr, joins it to node-00 and registers inst-2 on it again.
func (c *cluster) restartNode2At(addr string) *Node {
	c.t.Helper()
	cfg := testConfig(c.net, 2, nil)
	_ = cfg.Transport.Shutdown() // the one at node-02's old address
	cfg.Transport = c.net.NewTransport(addr)
	nd, err := New(cfg)
	require.NoError(c.t, err)
	c.nodes[2] = nd
	_, err = nd.Join(context.Background(), c.nodes[0].Addr())
	require.NoError(c.t, err)
	_, err = nd.Register(context.Background(), Service{Name: "svc", InstanceID: "inst-2", Handler: echoHandler})
	require.NoError(c.t, err)
	return nd
}

// waitRoutedAt waits until node-00 and node-01 see inst-2 healthy at nd's
// call address.
func (c *cluster) waitRoutedAt(timeout time.Duration, nd *Node) {
	c.t.Helper()
	for _, other := range c.nodes[:2] {
		testutil.Eventually(c.t, timeout, func() bool {
			for _, in := range other.HealthyInstances("svc") {
				if in.ID == "inst-2" {
					return in.Addr == nd.tr.CallAddr()
				}
			}
			return false
		}, "inst-2 healthy at its new address on %s", other.Name())
	}
}
