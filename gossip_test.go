package aegis

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/internal/wire"
)

// TestBadGossipIsDropped sends malformed, truncated and unknown-version
// messages through memberlist to a live node: each is dropped and counted,
// and the registry is untouched.
func TestBadGossipIsDropped(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	good, err := wire.Encode(&wire.Record{Service: "svc", ID: "evil", Node: "x", Incarnation: 1})
	require.NoError(t, err)
	bad := [][]byte{
		{},                             // empty
		{wire.Version},                 // truncated header
		append([]byte{9}, good[1:]...), // unknown version
		{wire.Version, 77, 0x90},       // unknown type
		good[:len(good)-4],             // truncated body
		{wire.Version, byte(wire.MsgRecord), 0xdd, 0xff, 0xff, 0xff, 0xff}, // array claiming 4G elements
		{wire.Version, byte(wire.MsgState), 0x90},                          // state outside push/pull
	}
	victim := c.nodes[1]
	sender := c.nodes[0]
	before := victim.Stats().GossipDropped
	var target = victim.gossip.ml.LocalNode()
	for _, b := range bad {
		require.NoError(t, sender.gossip.ml.SendBestEffort(target, b))
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return victim.Stats().GossipDropped-before == uint64(len(bad))
	}, "every bad message counted as dropped (got %d)", victim.Stats().GossipDropped-before)
	require.Len(t, victim.Instances("svc"), 2)
	require.Equal(t, []string{"svc"}, victim.Services())

	// Push/pull with garbage is dropped too.
	d := &delegate{g: victim.gossip}
	d.MergeRemoteState([]byte{wire.Version, byte(wire.MsgState), 0xc1}, false)
	d.MergeRemoteState(good, false)
	require.Equal(t, uint64(len(bad)+2), victim.Stats().GossipDropped-before)
	require.Len(t, victim.Instances("svc"), 2)

	// The node still works.
	c.regs[0].SetStatus(StatusDegraded)
	testutil.Eventually(t, 10*time.Second, func() bool { return status(victim, "inst-0") == StatusDegraded }, "still gossiping")
}

func TestRefuteStaleOwnRecord(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	// A record that claims to be node-01's but that node-01 does not host
	// (a previous life of the node name) is superseded by a tombstone.
	ghost := &wire.Record{Service: "svc", ID: "ghost", Node: c.nodes[1].Name(), Addr: "10.9.9.9:1", Incarnation: 5, Heartbeats: true}
	c.nodes[0].gossip.applyRecord(ghost)
	require.Equal(t, StatusHealthy, status(c.nodes[0], "ghost"))
	c.nodes[1].gossip.applyRecord(ghost)
	testutil.Eventually(t, 10*time.Second, func() bool {
		return status(c.nodes[0], "ghost") == -1 && status(c.nodes[1], "ghost") == -1
	}, "ghost refuted")
}

// A member that packets from an instance's node cannot reach (a one-way
// fault; memberlist still sees it alive through indirect probes) learns
// of the instance's deregistration from the other members, not only from a
// push/pull, which is switched off here.
func TestTombstoneReachesMemberAroundOneWayFault(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) { cfg.Gossip.PushPullInterval = time.Hour })
	c.waitConverged(10 * time.Second)
	c.net.SetLoss(c.nodes[0].Addr(), c.nodes[2].Addr(), 1)
	t.Cleanup(c.net.Heal)
	require.NoError(t, c.regs[0].Deregister(context.Background()))
	testutil.Eventually(t, 5*time.Second, func() bool {
		return status(c.nodes[2], "inst-0") == -1
	}, "node 2 drops inst-0, whose node cannot reach it")
	require.Equal(t, 3, len(c.nodes[0].Members()), "node 2 is still a member for node 0")
}

// A tombstone that arrives straight from its origin is passed on all the
// same (the origin sends only to the members it knows), as a gossip
// message, without the direct flag; a record is not (its heartbeats make
// a member that missed it pull it).
func TestDirectTombstoneIsRelayed(t *testing.T) {
	c := newCluster(t, 1, false)
	g := c.nodes[0].gossip
	for g.queue.Len() > 0 { // inst-0's own record
		g.queue.GetBroadcasts(0, 1400)
	}
	for _, rec := range []wire.Record{
		{Service: "svc", ID: "far", Node: "node-x", Addr: "10.9.9.9:1", Incarnation: 5, Heartbeats: true},
		{Service: "svc", ID: "far", Node: "node-x", Incarnation: 5, Seq: 1, Deleted: true},
	} {
		b, err := wire.Encode(&rec)
		require.NoError(t, err)
		g.handleGossip(wire.Direct(b))
		if !rec.Deleted {
			require.Zero(t, g.queue.Len(), "a record sent straight is not relayed")
			continue
		}
		out := g.queue.GetBroadcasts(0, 1400)
		require.Len(t, out, 1, "relayed: %+v", rec)
		require.Equal(t, b, out[0], "relayed as gossip, not as a direct send")
		for g.queue.Len() > 0 {
			g.queue.GetBroadcasts(0, 1400)
		}
		g.handleGossip(wire.Direct(b))
		require.Zero(t, g.queue.Len(), "a copy of what was applied already is not relayed")
	}
}

// A tombstone's direct send is repeated twice: after reannounceDelay and
// once more after lateRepeatDelay (the first repeat carries the request).
func TestTombstoneSentThreeTimes(t *testing.T) {
	c := newCluster(t, 1, true)
	g := c.nodes[0].gossip
	now := c.clk.Now()
	left := g.deliverDue([]delayed{
		{due: now, m: outMsg{msg: []byte{1}, late: true}},
		{due: now, m: outMsg{msg: []byte{2}}},
		{due: now.Add(time.Second), m: outMsg{msg: []byte{3}}},
	}, now)
	require.Len(t, left, 2)
	keep, again := left[:1], left[1:]
	require.Equal(t, []byte{3}, keep[0].m.msg, "not due yet")
	require.Len(t, again, 1, "one late repeat")
	require.False(t, again[0].m.late, "and no more")
	require.Equal(t, []byte{1}, again[0].m.msg)
	require.False(t, again[0].due.Before(now.Add(lateRepeatDelay)))
	require.True(t, again[0].due.Before(now.Add(lateRepeatDelay*3/2)))
}
