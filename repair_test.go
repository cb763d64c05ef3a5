package aegis

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/internal/wire"
)

func beatFrame(t *testing.T, node string, life, round uint64, index uint32) []byte {
	t.Helper()
	b, err := wire.Encode(&wire.Beats{Node: node, Life: life, Round: round,
		Packed: wire.PackBeats([]wire.Beat{{Index: index, Seq: round}})})
	require.NoError(t, err)
	return b
}

// What the store keeps of a member's rounds, and what it hands on.
func TestBeatStoreKeepsNewestRound(t *testing.T) {
	s := newBeatStore()
	now := time.Unix(1000, 0)
	r5a, r5b, r6 := beatFrame(t, "a", 1, 5, 1), beatFrame(t, "a", 1, 5, 2), beatFrame(t, "a", 1, 6, 1)

	s.keep("a", 1, 5, r5a, false, now)
	require.Empty(t, s.m, "a message that advanced nothing here is not kept for an unknown member")
	s.keep("a", 1, 5, wire.Direct(r5a), true, now)
	s.keep("a", 1, 5, r5b, false, now) // another part of the round
	s.keep("a", 1, 5, r5b, true, now)  // and its copy
	ask := &wire.Want{From: "x", Origins: []wire.WantOrigin{{Node: "a", Life: 1, Round: 4}}}
	msgs, limited := s.answer(ask, now)
	require.False(t, limited)
	require.Equal(t, [][]byte{r5a, r5b}, msgs, "both parts of round 5, without the direct flag")

	s.keep("a", 1, 4, beatFrame(t, "a", 1, 4, 1), true, now)
	s.keep("a", 1, 6, r6, false, now)
	msgs, _ = s.answer(ask, now)
	require.Equal(t, [][]byte{r5a, r5b}, msgs, "an older round, or a newer one that advanced nothing, changes nothing")
	s.keep("a", 1, 6, r6, true, now)
	msgs, _ = s.answer(ask, now)
	require.Equal(t, [][]byte{r6}, msgs)

	msgs, _ = s.answer(&wire.Want{From: "x", Origins: []wire.WantOrigin{{Node: "a", Life: 1, Round: 6}}}, now)
	require.Empty(t, msgs, "the asker has that round already")
	msgs, _ = s.answer(&wire.Want{From: "x", Origins: []wire.WantOrigin{{Node: "a", Life: 2, Round: 60}}}, now)
	require.Equal(t, [][]byte{r6}, msgs, "another life: whatever is kept")
	msgs, _ = s.answer(&wire.Want{From: "x", Origins: []wire.WantOrigin{{Node: "b"}}}, now)
	require.Empty(t, msgs)

	s.forget("a")
	msgs, _ = s.answer(ask, now)
	require.Empty(t, msgs)
}

// Wants are answered with at most repairFramesPerSec messages a second.
func TestBeatStoreLimitsAnswers(t *testing.T) {
	s := newBeatStore()
	now := time.Unix(1000, 0)
	s.keep("a", 1, 5, beatFrame(t, "a", 1, 5, 1), true, now)
	s.keep("b", 1, 5, beatFrame(t, "b", 1, 5, 1), true, now)
	one := &wire.Want{From: "x", Origins: []wire.WantOrigin{{Node: "a", Life: 1}}}
	two := &wire.Want{From: "x", Origins: []wire.WantOrigin{{Node: "a", Life: 1}, {Node: "b", Life: 1}}}
	for range repairFramesPerSec - 1 {
		msgs, limited := s.answer(one, now)
		require.False(t, limited)
		require.Len(t, msgs, 1)
	}
	msgs, limited := s.answer(two, now.Add(time.Millisecond))
	require.False(t, limited)
	require.Len(t, msgs, 1, "only what still fits the second")
	_, limited = s.answer(one, now.Add(999*time.Millisecond))
	require.True(t, limited)
	msgs, limited = s.answer(two, now.Add(time.Second))
	require.False(t, limited, "a new second")
	require.Len(t, msgs, 2)
}

// A node holds its Wants when many members are late at once: then it is
// most likely starved or cut off itself, and asking would add load.
func TestRepairHeldWhenManyAreLate(t *testing.T) {
	require.False(t, holdRepair(1, 2), "one member of a small cluster")
	require.False(t, holdRepair(4, 4), "a few, even all of a small cluster")
	require.False(t, holdRepair(20, 499), "a few percent, as loss makes them")
	require.True(t, holdRepair(125, 499), "a quarter of a large cluster")
	require.True(t, holdRepair(499, 499))
}

// A member is asked about once late, every retry, until giving up; never
// when not live, never this node itself.
func TestBeatStoreLate(t *testing.T) {
	s := newBeatStore()
	t0 := time.Unix(1000, 0)
	for _, n := range []string{"self", "a", "gone"} {
		s.keep(n, 1, 5, beatFrame(t, n, 1, 5, 1), true, t0)
	}
	live := func(n string) bool { return n != "gone" }
	late := func(at time.Duration) []wire.WantOrigin {
		return s.late("self", live, t0.Add(at), 6*time.Second, time.Second, 15*time.Second)
	}
	require.Empty(t, late(5*time.Second))
	require.Equal(t, []wire.WantOrigin{{Node: "a", Life: 1, Round: 5}}, late(7*time.Second))
	require.Empty(t, late(7500*time.Millisecond), "asked within retry")
	require.Len(t, late(8*time.Second), 1)
	require.Empty(t, late(16*time.Second), "given up")
	require.NotContains(t, s.m, "gone", "dropped")
	s.keep("a", 1, 6, beatFrame(t, "a", 1, 6, 1), true, t0.Add(16*time.Second))
	require.Empty(t, late(17*time.Second), "heard again")
}

// Heartbeats from a node whose packets to one member are all lost (a
// one-way fault: memberlist still sees that member alive through others)
// reach it through repair: it asks the other members for them, and the
// instance stays healthy there.
func TestHeartbeatsRepairedAroundOneWayFault(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.HeartbeatInterval = 100 * time.Millisecond
		cfg.HeartbeatTimeout = 600 * time.Millisecond
	})
	c.waitConverged(10 * time.Second)
	c.net.SetLoss(c.nodes[0].Addr(), c.nodes[2].Addr(), 1)
	t.Cleanup(c.net.Heal)
	before := c.nodes[2].Stats().HeartbeatWants
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		require.Equal(t, StatusHealthy, status(c.nodes[2], "inst-0"), "inst-0 on node 2")
		time.Sleep(20 * time.Millisecond)
	}
	require.Greater(t, c.nodes[2].Stats().HeartbeatWants, before)
	require.Positive(t, c.nodes[1].Stats().HeartbeatRepairs, "node 1 answered")
	testutil.Eventually(t, 5*time.Second, func() bool {
		return c.nodes[0].Stats().HeartbeatWants == 0
	}, "node 0 hears everyone")
}

// Heartbeats travel by gossip as well only with HeartbeatRetransmitMult
// set; by default a round goes straight to the members alone.
func TestHeartbeatGossipOnlyWhenAsked(t *testing.T) {
	for _, mult := range []int{0, 2} {
		c := newCluster(t, 2, true, func(cfg *Config) { cfg.Gossip.HeartbeatRetransmitMult = mult })
		c.waitConverged(10 * time.Second)
		c.nodes[0].heartbeatRound(gossipOnly)
		require.Equal(t, mult > 0, c.nodes[0].gossip.hbQueue.Len() > 0, "mult %d", mult)
		require.Zero(t, c.nodes[1].gossip.hbQueue.Len(), "mult %d: a direct copy is not passed on", mult)
	}
}

// A node that hears a heartbeat naming an instance it has no record of asks
// the heartbeat's sender for its records, and pulls the full state only if
// still missing a while after asking.
func TestRecordAsksSteps(t *testing.T) {
	a := newRecordAsks()
	t0 := time.Unix(1000, 0)
	require.Equal(t, askOrigin, a.next("o", t0))
	require.Equal(t, askWait, a.next("o", t0.Add(recordAskWait/2)), "the answer is on its way")
	require.Equal(t, askPull, a.next("o", t0.Add(recordAskWait)), "still missing")
	require.Equal(t, askWait, a.next("o", t0.Add(recordAskWait+time.Millisecond)))
	require.Equal(t, askOrigin, a.next("o", t0.Add(recordAskWait+recordAskForget)), "an old ask is forgotten")
	require.Equal(t, askOrigin, a.next("p", t0), "each origin apart")
	a.forget("p")
	require.Equal(t, askOrigin, a.next("p", t0.Add(time.Millisecond)))

	require.True(t, a.serve("x", t0))
	require.False(t, a.serve("x", t0.Add(recordServeEvery/2)), "one asker once per recordServeEvery")
	require.True(t, a.serve("x", t0.Add(recordServeEvery)))
	for i := range recordServesPerSec - 1 {
		require.True(t, a.serve(fmt.Sprint("y", i), t0.Add(recordServeEvery)))
	}
	require.False(t, a.serve("z", t0.Add(recordServeEvery)), "recordServesPerSec askers a second")
	require.True(t, a.serve("z", t0.Add(recordServeEvery+time.Second)))
}

// A record a node lacks comes back from its origin when the origin's
// heartbeats name it, without a full pull.
func TestMissingRecordAskedOfItsOrigin(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.Gossip.PushPullInterval = time.Hour // no periodic push/pull to bring it back
		cfg.HeartbeatInterval, cfg.HeartbeatTimeout = 500*time.Millisecond, 5*time.Second
	})
	c.waitConverged(10 * time.Second)
	from, to := c.nodes[0], c.nodes[2]
	k := instKey{"svc", "inst-0"}
	// Let the registrations' gossip and the direct sends' repeats pass:
	// either could bring the record back without an ask.
	require.NoError(t, from.gossip.waitQueueDrained(context.Background(), 5*time.Second))
	time.Sleep(3 * reannounceDelay)
	pulls, wants := to.gossip.pulls.Load(), to.Stats().HeartbeatWants
	to.reg.mu.Lock()
	e := to.reg.entries[k]
	require.NotNil(t, e)
	to.reg.removeLocked(k, e, "test", time.Now())
	to.reg.mu.Unlock()
	testutil.Eventually(t, 15*time.Second, func() bool {
		to.reg.mu.RLock()
		defer to.reg.mu.RUnlock()
		return to.reg.entries[k] != nil
	}, "the record is back")
	require.Greater(t, to.Stats().HeartbeatWants, wants, "asked")
	from.gossip.recAsks.mu.Lock()
	_, served := from.gossip.recAsks.served[to.Name()]
	from.gossip.recAsks.mu.Unlock()
	require.True(t, served, "the origin sent its records")
	require.Equal(t, pulls, to.gossip.pulls.Load(), "no full pull")
}
