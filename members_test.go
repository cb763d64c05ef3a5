package aegis

import (
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
