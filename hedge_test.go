package aegis

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

// TestHungInstanceCostsTheHedgeDelay: one of three instances stops
// answering (its handler hangs). With hedging every call succeeds in a
// fraction of the attempt timeout; without hedging the calls routed to it
// wait the whole attempt timeout. (Its node still answers pings, so lost
// races alone do not eject it: see TestBlackHoledNodeIsEjected.)
func TestHungInstanceCostsTheHedgeDelay(t *testing.T) {
	run := func(t *testing.T, hedgeDelay time.Duration) (worst time.Duration, n *Node) {
		c := newCluster(t, 3, false, func(cfg *Config) {
			cfg.AttemptTimeout = time.Second
			cfg.HedgeDelay = hedgeDelay
		})
		var hung atomic.Bool
		c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
			if req.InstanceID == "c-1" && hung.Load() {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return []byte(req.InstanceID), nil
		})
		for i := 0; i < 20; i++ { // the services' latency is learned
			_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
			require.NoError(t, err)
		}
		hung.Store(true)
		for i := 0; i < 30; i++ {
			start := time.Now()
			out, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
			require.NoError(t, err, "call %d", i)
			require.NotEqual(t, "c-1", string(out))
			worst = max(worst, time.Since(start))
		}
		return worst, c.nodes[0]
	}
	t.Run("hedged", func(t *testing.T) {
		worst, n := run(t, 0)
		t.Logf("worst call %v; %d hedges, %d won", worst, n.Stats().Hedges, n.Stats().HedgesWon)
		require.Less(t, worst, 700*time.Millisecond, "a hung instance costs the hedge delay, not the attempt timeout")
		require.NotZero(t, n.Stats().HedgesWon)
	})
	t.Run("unhedged", func(t *testing.T) {
		worst, n := run(t, -1)
		require.GreaterOrEqual(t, worst, time.Second, "without hedging a call waits the attempt timeout")
		require.Zero(t, n.Stats().Hedges)
	})
}

// TestHungInstanceSpendsNoBudget: with no retry budget at all, calls caught
// on a hung instance still succeed once it is ejected: moving off an
// ejected instance costs no budget.
func TestHungInstanceSpendsNoBudget(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.AttemptTimeout = 300 * time.Millisecond
		cfg.HedgeDelay = -1
		cfg.RetryBudgetRatio, cfg.RetryBudgetMinPerSecond = 0, 0
		cfg.EjectAfterFailures = 1
	})
	c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		if req.InstanceID == "c-1" {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return []byte(req.InstanceID), nil
	})
	for i := 0; i < 9; i++ {
		out, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
		require.NoError(t, err, "call %d", i)
		require.NotEqual(t, "c-1", string(out))
	}
}

// TestBlackHoledNodeIsEjected: a node the caller can no longer reach (its
// packets black-holed, as for a stopped process) costs callers the hedge
// delay, and since it also fails the pings that follow lost races, it is
// ejected after a few.
func TestBlackHoledNodeIsEjected(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) { cfg.AttemptTimeout = time.Second })
	c.counting(nil)
	for i := 0; i < 20; i++ { // connections up, latency learned
		_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
		require.NoError(t, err)
	}
	c.net.Partition([]string{c.nodes[0].Addr()}, []string{c.nodes[2].Addr()})
	log0 := subscribeLog(c.nodes[0])
	var worst time.Duration
	for i := 0; i < 60 && !log0.has(EventEjected, "c-2", StatusHealthy, "consecutive-failures"); i++ {
		start := time.Now()
		_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
		require.NoError(t, err, "call %d", i)
		worst = max(worst, time.Since(start))
		time.Sleep(20 * time.Millisecond) // let the pings after lost races finish
	}
	t.Logf("worst call %v", worst)
	require.Less(t, worst, 700*time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() bool {
		return log0.has(EventEjected, "c-2", StatusHealthy, "consecutive-failures")
	}, "the black-holed instance is ejected: %s", log0)
}
