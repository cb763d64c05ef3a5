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

// TestRegisterRunsNoHeartbeatRound: Register announces the record (the
// first heartbeat everywhere) and sends no heartbeats itself, so that
// registering n instances costs O(n), not a round over all of them each.
func TestRegisterRunsNoHeartbeatRound(t *testing.T) {
	c := newCluster(t, 1, true)
	nd := c.nodes[0]
	before := nd.Stats().HeartbeatsSent
	for i := range 2000 {
		_, err := nd.Register(context.Background(), Service{Name: "bulk", InstanceID: fmt.Sprintf("b-%d", i), Handler: echoHandler})
		require.NoError(t, err)
	}
	require.Equal(t, before, nd.Stats().HeartbeatsSent)
	nd.heartbeatRound(gossipOnly)
	require.Equal(t, before+2001, nd.Stats().HeartbeatsSent, "one round beats for every instance")
}

// TestCompactHeartbeatsApply: the heartbeats of a round reach a peer as
// compact messages naming instances by index, and advance its view.
func TestCompactHeartbeatsApply(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	k := instKey{"svc", "inst-0"}
	own := ownRecord(c.nodes[0], k)
	require.NotZero(t, own.Index)
	require.Equal(t, c.nodes[0].life, own.Life)
	c.nodes[0].heartbeatRound(gossipOnly)
	testutil.Eventually(t, 10*time.Second, func() bool {
		c.nodes[1].reg.mu.RLock()
		defer c.nodes[1].reg.mu.RUnlock()
		return c.nodes[1].reg.entries[k].rec.Seq >= ownRecord(c.nodes[0], k).Seq
	}, "node-01 took node-00's compact heartbeat")
}

// TestCompactHeartbeatForUnknownIndex: a compact heartbeat naming an
// index (or a life) the receiver has no record for is counted as unknown,
// changes nothing, and makes the receiver pull from its origin.
func TestCompactHeartbeatForUnknownIndex(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	from, victim := c.nodes[0], c.nodes[1]
	k := instKey{"svc", "inst-0"}
	own := ownRecord(from, k)
	before := victim.Stats().HeartbeatsUnknown
	for _, b := range []wire.Beats{
		{Node: from.Name(), Life: from.life, Packed: wire.PackBeats([]wire.Beat{{Index: 999, Seq: own.Seq + 5}})},
		{Node: from.Name(), Life: from.life + 1, Packed: wire.PackBeats([]wire.Beat{{Index: own.Index, Seq: own.Seq + 5}})},
	} {
		victim.gossip.handleGossip(encode(t, &b))
	}
	require.Equal(t, before+2, victim.Stats().HeartbeatsUnknown)
	victim.reg.mu.RLock()
	seq := victim.reg.entries[k].rec.Seq
	victim.reg.mu.RUnlock()
	require.Less(t, seq, own.Seq+5, "a beat for another life is not applied")
}

// TestRecordsAndHeartbeatsShareGossip: with both broadcast queues full,
// consecutive gossip packets carry both kinds.
func TestRecordsAndHeartbeatsShareGossip(t *testing.T) {
	c := newCluster(t, 1, true)
	g := c.nodes[0].gossip
	for i := range 100 {
		g.enqueue(g.queue, fmt.Sprintf("r%d", i), append([]byte{'r'}, make([]byte, 200)...))
		g.enqueue(g.hbQueue, fmt.Sprintf("h%d", i), append([]byte{'h'}, make([]byte, 200)...))
	}
	kinds := map[byte]int{}
	d := &delegate{g: g}
	for range 4 {
		for _, m := range d.GetBroadcasts(3, 1400) {
			kinds[m[0]]++
		}
	}
	require.Greater(t, kinds['r'], 4, "records sent")
	require.Greater(t, kinds['h'], 4, "heartbeats sent")
}

// TestRepeatedCompactHeartbeatsAreSkipped: a copy of a compact heartbeat
// message already applied is dropped before decoding; a new one is not.
func TestRepeatedCompactHeartbeatsAreSkipped(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	from, to := c.nodes[0], c.nodes[1]
	own := ownRecord(from, instKey{"svc", "inst-0"})
	msg := func(seq uint64) []byte {
		return encode(t, &wire.Beats{Node: from.Name(), Life: from.life, Packed: wire.PackBeats([]wire.Beat{{Index: own.Index, Seq: seq}})})
	}
	before := to.Stats().GossipReceived
	to.gossip.handleGossip(msg(own.Seq + 100))
	to.gossip.handleGossip(msg(own.Seq + 100))
	to.gossip.handleGossip(wire.Direct(msg(own.Seq + 100)))
	require.Equal(t, before+1, to.Stats().GossipReceived, "copies skipped")
	to.gossip.handleGossip(msg(own.Seq + 101))
	require.Equal(t, before+2, to.Stats().GossipReceived)
	r := newRecentBodies(2, 0)
	at := time.Unix(1000, 0)
	for _, b := range []string{"a", "b", "c"} {
		r.add([]byte(b), at)
	}
	require.True(t, r.seen([]byte("a"), at.Add(time.Hour)), "the older generation is kept")
	r.add([]byte("d"), at)
	r.add([]byte("e"), at)
	require.False(t, r.seen([]byte("a"), at), "and forgotten when the newer fills again")
}

// TestRepeatedRecordsAreSkipped: the copy of a record message that changed
// the registry a moment ago is dropped before decoding; a record that
// changed nothing is read again; past the window every copy is read.
func TestRepeatedRecordsAreSkipped(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	from, to := c.nodes[0], c.nodes[1]
	rec := ownRecord(from, instKey{"svc", "inst-0"})
	rec.Seq += 100
	msg := encode(t, &rec)
	before := to.Stats().GossipReceived
	to.gossip.handleGossip(msg)
	to.gossip.handleGossip(wire.Direct(msg))
	require.Equal(t, before+1, to.Stats().GossipReceived, "the repeat is skipped")
	stale := ownRecord(from, instKey{"svc", "inst-0"})
	stale.Seq = 1
	old := encode(t, &stale)
	to.gossip.handleGossip(old)
	to.gossip.handleGossip(old)
	require.Equal(t, before+3, to.Stats().GossipReceived, "a record that changed nothing is not remembered")

	r := newRecentBodies(2, recentRecordWindow)
	at := time.Unix(1000, 0)
	r.add([]byte("a"), at)
	require.True(t, r.seen([]byte("a"), at.Add(recentRecordWindow)))
	require.False(t, r.seen([]byte("a"), at.Add(recentRecordWindow+time.Millisecond)), "past the window")
	for _, b := range []string{"b", "c", "d", "e"} {
		r.add([]byte(b), at)
	}
	require.False(t, r.seen([]byte("a"), at), "forgotten when the newer generation fills again")
	require.True(t, r.seen([]byte("d"), at), "the older generation is kept")
}
