package aegis

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/rpc"
	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/internal/wire"
)

// roleRun is one handler run of the role service: which instance answered,
// with which epoch, in the order runs started (across all nodes).
type roleRun struct {
	seq   int64
	id    string
	epoch uint64
}

// runLog records every handler run of the role service in a test.
type runLog struct {
	seq  atomic.Int64
	mu   sync.Mutex
	runs []roleRun
}

func (l *runLog) handler(id string) Handler {
	return func(ctx context.Context, req *Request) ([]byte, error) {
		s := l.seq.Add(1)
		l.mu.Lock()
		l.runs = append(l.runs, roleRun{seq: s, id: id, epoch: req.Epoch})
		l.mu.Unlock()
		return []byte(id), nil
	}
}

// checkNoOverlap asserts that no handler run of an older epoch started after
// one of a newer epoch: two actives never answered at once.
func (l *runLog) checkNoOverlap(t *testing.T) map[uint64]int {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	byEpoch := map[uint64]int{}
	owner := map[uint64]string{}
	var high uint64
	for _, r := range l.runs {
		require.GreaterOrEqual(t, r.epoch, high, "run %d by %s with epoch %d after a run with epoch %d", r.seq, r.id, r.epoch, high)
		high = r.epoch
		byEpoch[r.epoch]++
		if o, ok := owner[r.epoch]; ok {
			require.Equal(t, o, r.id, "two instances answered with epoch %d", r.epoch)
		}
		owner[r.epoch] = r.id
	}
	return byEpoch
}

// roleConfig shortens every timeout that promotion waits for.
func roleConfig(cfg *Config) {
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.HeartbeatTimeout = 2 * time.Second
	cfg.RoleLeaseTimeout = 400 * time.Millisecond
	cfg.AttemptTimeout = time.Second
}

// newRoleCluster starts n nodes with roleConfig and registers the members
// of "db" on them (see addRoleMembers).
func newRoleCluster(t *testing.T, n int, mode PromotionMode, log *runLog) (*cluster, []*Registration) {
	t.Helper()
	c := newCluster(t, n, false, roleConfig)
	c.waitConverged(10 * time.Second)
	return c, addRoleMembers(t, c, mode, log)
}

// addRoleMembers registers on node i an instance "db-<i>" of service "db":
// node 0 active, the others standbys with priority n-i (node 1 is promoted
// first), and waits until every node sees them all, db-0 active.
func addRoleMembers(t *testing.T, c *cluster, mode PromotionMode, log *runLog) []*Registration {
	t.Helper()
	n := len(c.nodes)
	regs := make([]*Registration, n)
	for i, nd := range c.nodes {
		role := RoleStandby
		if i == 0 {
			role = RoleActive
		}
		id := fmt.Sprintf("db-%d", i)
		reg, err := nd.Register(context.Background(), Service{Name: "db", InstanceID: id, Role: role,
			Priority: n - i, Promotion: mode, Handler: log.handler(id)})
		require.NoError(t, err)
		regs[i] = reg
	}
	waitActive(t, c.nodes, "db-0", 1)
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, nd := range c.nodes {
			if v := nd.Roles("db"); len(v[0].Standbys) != n-1 || v[0].Standbys[n-2].Status != StatusHealthy {
				return false
			}
		}
		return true
	}, "every node sees every standby")
	return regs
}

// waitActive waits until every node sees id as the active of "db", with
// the same epoch, at least epoch. (A candidacy that loses to another
// standby's, when a loaded machine delays heartbeats past the tests' short
// timeout, costs an epoch: promotions then skip numbers, which is allowed.)
func waitActive(t *testing.T, nodes []*Node, id string, epoch uint64) {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, func() bool {
		var seen uint64
		for _, nd := range nodes {
			v := nd.Roles("db")
			if len(v) != 1 || v[0].Active == nil || v[0].Active.ID != id || v[0].Active.Epoch < epoch ||
				seen != 0 && v[0].Active.Epoch != seen {
				return false
			}
			seen = v[0].Active.Epoch
		}
		return true
	}, "every node sees %s active with epoch %d or more: %v", id, epoch, lazy(func() string { return rolesOf(nodes) }))
}

func rolesOf(nodes []*Node) string {
	s := ""
	for _, nd := range nodes {
		for _, v := range nd.Roles("db") {
			act := "none"
			if v.Active != nil {
				act = fmt.Sprintf("%s@%d", v.Active.ID, v.Active.Epoch)
			}
			s += fmt.Sprintf("%s: active %s epoch %d standbys %d; ", nd.Name(), act, v.Epoch, len(v.Standbys))
		}
	}
	return s
}

// callLoop calls "db" from nd until stop is closed and counts outcomes.
func callLoop(nd *Node, stop <-chan struct{}, ok, failed *atomic.Int64, lastErr *atomic.Value) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := nd.CallWithFailover(ctx, "db", "get", nil)
		cancel()
		if err != nil {
			failed.Add(1)
			lastErr.Store(err.Error())
		} else {
			ok.Add(1)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRolesRouteToActiveAndEveryNodeAgrees(t *testing.T) {
	var log runLog
	c, regs := newRoleCluster(t, 3, PromoteWithMajority, &log)
	for _, nd := range c.nodes {
		v := nd.Roles("db")
		require.Len(t, v, 1)
		require.Equal(t, "db", v[0].Group)
		require.Equal(t, PromoteWithMajority, v[0].Mode)
		require.Equal(t, []string{"db-1", "db-2"}, []string{v[0].Standbys[0].ID, v[0].Standbys[1].ID}, "promotion order")
		require.Equal(t, []Instance{*v[0].Active}, nd.HealthyInstances("db"), "only the active is routable")
	}
	role, epoch := regs[0].Role()
	require.Equal(t, RoleActive, role)
	require.Equal(t, uint64(1), epoch)
	for i := 0; i < 30; i++ {
		out, err := c.nodes[i%3].CallWithFailover(context.Background(), "db", "get", nil)
		require.NoError(t, err)
		require.Equal(t, "db-0", string(out))
	}
	require.Equal(t, map[uint64]int{1: 30}, log.checkNoOverlap(t), "every call carried epoch 1")

	// A standby refuses calls addressed to it directly.
	_, err := c.nodes[0].Call(context.Background(), "db", "get", nil, WithGroup("nope"))
	require.ErrorIs(t, err, ErrServiceNotFound)
	resp, err := c.nodes[0].caller.client.Call(context.Background(), c.nodes[1].tr.CallAddr(),
		&rpc.Request{Service: "db", Method: "get", InstanceID: "db-1"})
	require.NoError(t, err)
	require.NotNil(t, resp.Err)
	require.Contains(t, resp.Err.Message, "standby")
}

func TestRoleConflictAndValidation(t *testing.T) {
	var log runLog
	c, _ := newRoleCluster(t, 3, PromoteWithMajority, &log)
	_, err := c.nodes[2].Register(context.Background(), Service{Name: "db", InstanceID: "db-x", Role: RoleActive, Handler: echoHandler})
	require.ErrorIs(t, err, ErrRoleConflict)
	require.Contains(t, err.Error(), "db-0")

	bad := []struct {
		svc  Service
		want error
	}{
		{Service{Name: "db", Role: RoleStandby, Group: "a:b"}, ErrInvalidName},
		{Service{Name: "db", Role: RoleStandby, Promotion: 7}, ErrInvalidService},
		{Service{Name: "db", Group: "g"}, ErrInvalidService},
		{Service{Name: "db", Priority: 3}, ErrInvalidService},
		{Service{Name: "db", Role: RoleStandby, Priority: 1 << 40}, ErrInvalidService},
	}
	for _, b := range bad {
		b.svc.Handler = echoHandler
		_, err := c.nodes[0].Register(context.Background(), b.svc)
		require.ErrorIs(t, err, b.want, "%+v", b.svc)
	}
}

func TestPromotionOnCrashLosesNoCall(t *testing.T) {
	for _, mode := range []PromotionMode{PromoteWithMajority, PromoteAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			var log runLog
			c, regs := newRoleCluster(t, 4, mode, &log)
			var promoted atomic.Value
			regs[1].OnRoleChange(func(ch RoleChange) { promoted.Store(ch) })
			var ok, failed atomic.Int64
			var lastErr atomic.Value
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for _, nd := range c.nodes[1:] {
				wg.Go(func() { callLoop(nd, stop, &ok, &failed, &lastErr) })
			}
			testutil.Eventually(t, 5*time.Second, func() bool { return ok.Load() > 50 }, "calls flow")
			require.NoError(t, c.nodes[0].Shutdown()) // abrupt: no Leave
			waitActive(t, c.nodes[1:], "db-1", 2)
			before := ok.Load()
			testutil.Eventually(t, 5*time.Second, func() bool { return ok.Load() > before+50 }, "calls flow again")
			close(stop)
			wg.Wait()
			require.Zero(t, failed.Load(), "failed calls; last: %v", lastErr.Load())
			byEpoch := log.checkNoOverlap(t)
			require.Positive(t, byEpoch[ch0(regs[1])], "the new active answered with its epoch")
			ch, _ := promoted.Load().(RoleChange)
			require.Equal(t, RoleActive, ch.Role)
			require.Equal(t, "promoted", ch.Reason)
			require.GreaterOrEqual(t, ch.Epoch, uint64(2))
		})
	}
}

func TestPromotionAfterHeartbeatTimeout(t *testing.T) {
	var log runLog
	c, regs := newRoleCluster(t, 3, PromoteWithMajority, &log)
	logs := make([]*eventLog, len(c.nodes))
	for i, nd := range c.nodes {
		logs[i] = subscribeLog(nd)
	}
	regs[0].PauseHeartbeats() // its node stays up and keeps answering round trips
	waitActive(t, c.nodes, "db-1", 2)
	testutil.Eventually(t, 5*time.Second, func() bool {
		role, _ := regs[0].Role()
		return role == RoleStandby
	}, "the old active demoted itself")
	for i := range c.nodes {
		testutil.Eventually(t, 5*time.Second, func() bool { return logs[i].hasRole("db-1", "promoted") }, "promotion event on node %d", i)
	}
	regs[0].ResumeHeartbeats()
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, nd := range c.nodes {
			v := nd.Roles("db")[0]
			// db-0 has the highest priority: first among the standbys.
			if v.Active == nil || v.Active.ID != "db-1" || len(v.Standbys) != 2 || v.Standbys[0].ID != "db-0" ||
				v.Standbys[0].Status != StatusHealthy || v.Standbys[0].Role != RoleStandby {
				return false
			}
		}
		return true
	}, "the old active is back as a healthy standby, without flapping back: %v", lazy(func() string { return rolesOf(c.nodes) }))
	log.checkNoOverlap(t)
}

// partitionRoles cuts node 0 off from the others.
func partitionRoles(c *cluster) {
	addrs := func(nodes ...*Node) []string {
		var out []string
		for _, nd := range nodes {
			out = append(out, nd.Addr(), nd.tr.CallAddr())
		}
		return out
	}
	c.net.Partition(addrs(c.nodes[0]), addrs(c.nodes[1:]...))
}

func TestPromoteWithMajorityFencesTheMinority(t *testing.T) {
	var log runLog
	c, regs := newRoleCluster(t, 3, PromoteWithMajority, &log)
	fenced := make(chan RoleChange, 4)
	regs[0].OnRoleChange(func(ch RoleChange) { fenced <- ch })
	var ok, failed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, nd := range c.nodes { // the minority side calls too
		wg.Go(func() { callLoop(nd, stop, &ok, &failed, &lastErr) })
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return ok.Load() > 50 }, "calls flow")
	partitionRoles(c)
	waitActive(t, c.nodes[1:], "db-1", 2)
	select {
	case ch := <-fenced:
		require.Equal(t, RoleChange{Role: RoleStandby, Epoch: 1, Reason: "fenced"}, ch)
	case <-time.After(5 * time.Second):
		t.Fatal("the minority's active did not fence itself")
	}
	before := ok.Load()
	testutil.Eventually(t, 5*time.Second, func() bool { return ok.Load() > before+50 }, "the majority's calls flow")
	c.net.Heal()
	waitActive(t, c.nodes, "db-1", 2)
	close(stop)
	wg.Wait()
	role, _ := regs[0].Role()
	require.Equal(t, RoleStandby, role)
	byEpoch := log.checkNoOverlap(t)
	require.Positive(t, byEpoch[1])
	require.Positive(t, byEpoch[ch0(regs[1])])
	t.Logf("calls: %d answered, %d failed (the minority's callers wait, then time out or succeed after heal)", ok.Load(), failed.Load())
}

func TestPromoteAlwaysSplitBrainHealsToOne(t *testing.T) {
	var log runLog
	c, regs := newRoleCluster(t, 3, PromoteAlways, &log)
	partitionRoles(c)
	waitActive(t, c.nodes[1:], "db-1", 2)
	// The minority side keeps its own active: the documented split brain.
	role, epoch := regs[0].Role()
	require.Equal(t, RoleActive, role)
	require.Equal(t, uint64(1), epoch)
	out, err := c.nodes[0].CallWithFailover(context.Background(), "db", "get", nil)
	require.NoError(t, err)
	require.Equal(t, "db-0", string(out))

	logs := subscribeLog(c.nodes[0])
	c.net.Heal()
	waitActive(t, c.nodes, "db-1", 2)
	testutil.Eventually(t, 5*time.Second, func() bool { r, _ := regs[0].Role(); return r == RoleStandby }, "db-0 demoted")
	testutil.Eventually(t, 5*time.Second, func() bool { return logs.hasRole("db-0", "conflict") }, "conflict event")
}

func TestEpochFence(t *testing.T) {
	var f EpochFence
	require.NoError(t, f.Admit(0))
	require.NoError(t, f.Admit(3))
	require.NoError(t, f.Admit(3))
	require.NoError(t, f.AdmitRequest(&Request{Epoch: 4}))
	err := f.Admit(3)
	require.ErrorIs(t, err, ErrStaleEpoch)
	require.Contains(t, err.Error(), "epoch 4")
	require.Equal(t, uint64(4), f.Highest())
}

func TestPromotionOrder(t *testing.T) {
	rec := func(id string, prio int32, inc int64, epoch uint64) *wire.Record {
		return &wire.Record{ID: id, Priority: prio, Incarnation: inc, Epoch: epoch}
	}
	cases := []struct {
		a, b         *wire.Record
		before, wins bool
	}{
		{rec("a", 2, 5, 0), rec("b", 1, 1, 0), true, true},   // priority first
		{rec("a", 1, 1, 0), rec("b", 1, 5, 0), true, true},   // then earlier registration
		{rec("b", 1, 1, 0), rec("a", 1, 1, 0), false, false}, // then ID
		{rec("a", 0, 9, 3), rec("b", 9, 1, 2), false, true},  // an active's epoch beats the order
	}
	for i, c := range cases {
		assert.Equal(t, c.before, promotesBefore(c.a, c.b), "case %d order", i)
		assert.Equal(t, c.wins, activeBeats(c.a, c.b), "case %d conflict", i)
	}
}

func TestRoleMessagesFromTheNetwork(t *testing.T) {
	m := roleMsg{service: "db", group: "db", target: "db-1", from: "db-0", epoch: 7}
	got, ok := decodeRoleMsg(encodeRoleMsg(m))
	require.True(t, ok)
	require.Equal(t, m, got)
	b := encodeRoleMsg(m)
	for _, bad := range [][]byte{nil, b[:7], b[:len(b)-1], append(append([]byte{}, b...), 0),
		encodeRoleMsg(roleMsg{service: "db", group: "a b", target: "x", from: "y"}),
		encodeRoleMsg(roleMsg{service: "db", group: "g", target: "x", from: "y", epoch: wire.MaxEpoch + 1})} {
		_, ok := decodeRoleMsg(bad)
		require.False(t, ok, "%x", bad)
	}
	rep := roleReply{granted: true, epoch: 3, ago: -1}
	back, ok := decodeRoleReply(encodeRoleReply(rep))
	require.True(t, ok)
	require.Equal(t, rep, back)
	_, ok = decodeRoleReply([]byte{2, 0})
	require.False(t, ok)
}

func (l *eventLog) hasRole(id, reason string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.evs {
		if e.Type == EventRoleChanged && e.Instance.ID == id && e.Reason == reason {
			return true
		}
	}
	return false
}

func TestGroupsWithinOneService(t *testing.T) {
	c := newCluster(t, 2, false, roleConfig)
	c.waitConverged(10 * time.Second)
	ctx := context.Background()
	// Actives first: a group with only standbys promotes one at once.
	for _, standbys := range []bool{false, true} {
		for i, g := range []string{"shard-a", "shard-b"} {
			j, role := i, RoleActive
			if standbys {
				j, role = 1-i, RoleStandby
			}
			nd := c.nodes[j]
			id := fmt.Sprintf("%s-%d", g, j)
			_, err := nd.Register(ctx, Service{Name: "db", InstanceID: id, Role: role, Group: g, Promotion: PromoteAlways,
				Handler: func(context.Context, *Request) ([]byte, error) { return []byte(id), nil }})
			require.NoError(t, err)
			if !standbys {
				waitActive2(t, c.nodes, g, id)
			}
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, nd := range c.nodes {
			v := nd.Roles("db")
			if len(v) != 2 || v[0].Active == nil || v[1].Active == nil || len(v[0].Standbys) != 1 || len(v[1].Standbys) != 1 {
				return false
			}
		}
		return true
	}, "both groups have an active on every node")
	v := c.nodes[0].Roles("db")
	require.Equal(t, []string{"shard-a", "shard-b"}, []string{v[0].Group, v[1].Group})
	require.Equal(t, "shard-a-0", v[0].Active.ID)
	require.Equal(t, "shard-b-1", v[1].Active.ID)
	for _, nd := range c.nodes {
		out, err := nd.CallWithFailover(ctx, "db", "get", nil, WithGroup("shard-b"))
		require.NoError(t, err)
		require.Equal(t, "shard-b-1", string(out))
		out, err = nd.Call(ctx, "db", "get", nil, WithGroup("shard-a"))
		require.NoError(t, err)
		require.Equal(t, "shard-a-0", string(out))
	}
	_, err := c.nodes[0].Call(ctx, "db", "get", nil, WithGroup("shard-c"))
	require.ErrorIs(t, err, ErrServiceNotFound)
	require.Len(t, c.nodes[0].HealthyInstances("db"), 2, "one active per group")
}

func FuzzDecodeRoleMsg(f *testing.F) {
	f.Add(encodeRoleMsg(roleMsg{service: "db", group: "db", target: "db-1", from: "db-0", epoch: 7}))
	f.Add([]byte{})
	f.Add(encodeRoleReply(roleReply{granted: true, epoch: 1, ago: 5}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, ok := decodeRoleMsg(b); ok {
			require.Equal(t, b, encodeRoleMsg(m), "a decoded message encodes back to the same bytes")
		}
		if r, ok := decodeRoleReply(b); ok {
			require.Equal(t, b, encodeRoleReply(r))
		}
	})
}

// The active's heartbeats stop while its node stays up: on the fake clock,
// nothing happens at exactly HeartbeatTimeout, and one second later every
// node promotes the same standby.
func TestPromotionAfterHeartbeatTimeoutOnTheClock(t *testing.T) {
	c := newCluster(t, 3, true)
	c.waitConverged(10 * time.Second)
	var log runLog
	regs := addRoleMembers(t, c, PromoteAlways, &log)
	c.settle()
	regs[0].PauseHeartbeats()
	c.advance(30*time.Second, nil)
	waitActive(t, c.nodes, "db-0", 1) // still: the timeout is "older than"
	c.advance(time.Second, nil)
	waitActive(t, c.nodes, "db-1", 2)
}

// waitActive2 waits until every node sees id as the active of group g of
// "db".
func waitActive2(t *testing.T, nodes []*Node, g, id string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, nd := range nodes {
			found := false
			for _, v := range nd.Roles("db") {
				found = found || v.Group == g && v.Active != nil && v.Active.ID == id
			}
			if !found {
				return false
			}
		}
		return true
	}, "every node sees %s active in %s", id, g)
}

// ch0 returns the epoch at which r last became active.
func ch0(r *Registration) uint64 { _, e := r.Role(); return e }

// A standby registered on a node cut off from its group sees no active
// and only itself; under PromoteWithMajority it must not promote itself.
// With GroupSize, an active registered there cannot keep a lease either.
func TestCutOffMemberDoesNotServe(t *testing.T) {
	var log runLog
	c, _ := newRoleCluster(t, 3, PromoteWithMajority, &log)
	late := c.addNode(roleConfig) // joins node 0, then is cut off from everyone
	c.net.Partition([]string{late.Addr(), late.tr.CallAddr()}, []string{c.nodes[0].Addr(), c.nodes[0].tr.CallAddr(),
		c.nodes[1].Addr(), c.nodes[1].tr.CallAddr(), c.nodes[2].Addr(), c.nodes[2].tr.CallAddr()})
	ctx := context.Background()
	standby, err := late.Register(ctx, Service{Name: "fresh", InstanceID: "fresh-1", Role: RoleStandby, Handler: log.handler("fresh-1")})
	require.NoError(t, err)
	require.Never(t, func() bool { r, _ := standby.Role(); return r == RoleActive }, 6*late.cfg.RoleLeaseTimeout, 20*time.Millisecond,
		"a standby that never saw an active does not promote itself")

	fenced := make(chan RoleChange, 1)
	active, err := late.Register(ctx, Service{Name: "sized", InstanceID: "sized-1", Role: RoleActive, GroupSize: 3,
		Handler: log.handler("sized-1")})
	require.NoError(t, err)
	active.OnRoleChange(func(ch RoleChange) { fenced <- ch })
	_, err = late.Call(ctx, "sized", "get", nil)
	require.ErrorIs(t, err, ErrInstanceUnavailable, "no majority of 3: no lease, no answers")
	select {
	case ch := <-fenced:
		require.Equal(t, "fenced", ch.Reason)
	case <-time.After(10 * time.Second):
		t.Fatal("an active without a majority of its GroupSize was not fenced")
	}
	// Heal and let memberlist settle, so that no probe of a cut-off peer
	// is still waiting when the nodes shut down.
	c.net.Heal()
	c.waitConverged(30 * time.Second)
}

// The answers a member gives, rule by rule: promises are exclusive per
// epoch, leases below a promise are refused, and a member that confirmed a
// healthy active within RoleLeaseTimeout supports no candidate.
func TestMemberAnswers(t *testing.T) {
	c := newCluster(t, 1, true, roleConfig)
	nd := c.nodes[0]
	r, err := nd.Register(context.Background(), Service{Name: "db", InstanceID: "m", Role: RoleStandby, Handler: echoHandler})
	require.NoError(t, err)
	none := &groupState{epoch: 1}
	ask := func(kind string, epoch uint64, from string, g *groupState) roleReply {
		m := roleMsg{service: "db", group: "db", target: "m", from: from, epoch: epoch}
		if kind == roleLease {
			return nd.answerLease(r, g, m)
		}
		return nd.answerCandidacy(r, g, m)
	}
	require.True(t, ask(roleCandidacy, 2, "c1", none).granted)
	require.Equal(t, roleReply{epoch: 2}, ask(roleCandidacy, 2, "c2", none), "epoch 2 is promised to c1")
	require.True(t, ask(roleCandidacy, 2, "c1", none).granted, "asking again is fine")
	require.Equal(t, roleReply{epoch: 2}, ask(roleLease, 1, "old", none), "a lease below the promise")
	require.Equal(t, roleReply{epoch: 2}, ask(roleLease, 2, "c2", none), "a lease at the promised epoch from another")
	require.Equal(t, roleReply{epoch: 5}, ask(roleCandidacy, 3, "c3", &groupState{epoch: 5}), "not newer than the group's epoch")
	require.True(t, ask(roleLease, 2, "c1", none).granted)

	active := Instance{ID: "c1", Epoch: 2}
	withActive := &groupState{epoch: 2, active: &active}
	require.Equal(t, roleReply{epoch: 2}, ask(roleCandidacy, 3, "c2", withActive), "confirmed a healthy active just now")
	c.clk.Advance(nd.cfg.RoleLeaseTimeout)
	rep := ask(roleCandidacy, 3, "c2", withActive)
	require.True(t, rep.granted, "a lease older than RoleLeaseTimeout no longer holds the member")
	require.Equal(t, nd.cfg.RoleLeaseTimeout, rep.ago, "and it says when it last confirmed one")
	require.Equal(t, roleReply{epoch: 3}, ask(roleLease, 2, "c1", withActive), "the old active is refused now")

	// Two actives that took the same epoch: the member confirms one only.
	require.True(t, ask(roleLease, 7, "x", none).granted)
	require.Equal(t, roleReply{epoch: 7}, ask(roleLease, 7, "y", none), "epoch 7 is x's here")
	require.True(t, ask(roleLease, 7, "x", none).granted, "x renews")
}

// Two instances registered as active at once on nodes that cannot see
// each other, with one member both can still call: it confirms one lease
// only, so at no moment do both serve. Nodes 0 and 1 are cut from each
// other entirely and from node 2's gossip (so neither learns of the
// other's active through it, and both registrations succeed), while the
// calls they open to node 2, where the witness answers lease round trips,
// still work.
func TestSimultaneousActivesNeverBothServe(t *testing.T) {
	c := newCluster(t, 3, false, roleConfig)
	c.waitConverged(10 * time.Second)
	ctx := context.Background()
	_, err := c.nodes[2].Register(ctx, Service{Name: "db", InstanceID: "db-w", Role: RoleStandby, GroupSize: 3, Handler: echoHandler})
	require.NoError(t, err)
	testutil.Eventually(t, 10*time.Second, func() bool {
		return len(c.nodes[0].Instances("db")) == 1 && len(c.nodes[1].Instances("db")) == 1
	}, "nodes 0 and 1 know the witness")
	c.net.Partition([]string{c.nodes[0].Addr(), c.nodes[0].tr.CallAddr()}, []string{c.nodes[1].Addr(), c.nodes[1].tr.CallAddr()})
	c.net.SetLoss(c.nodes[2].Addr(), c.nodes[0].Addr(), 1) // node 2's gossip (and dials) to 0 and 1 are lost;
	c.net.SetLoss(c.nodes[2].Addr(), c.nodes[1].Addr(), 1) // calls 0 and 1 open to node 2 still work
	t.Cleanup(func() { c.net.Heal(); c.waitConverged(30 * time.Second) })
	regs := make([]*Registration, 2)
	for i := range regs {
		regs[i], err = c.nodes[i].Register(ctx, Service{Name: "db", InstanceID: fmt.Sprintf("db-%d", i), Role: RoleActive,
			GroupSize: 3, Handler: echoHandler})
		require.NoError(t, err, "node %d cannot see the other active", i)
		require.Equal(t, uint64(1), regs[i].role.epoch.Load(), "both took epoch 1")
	}
	both, one := 0, 0
	deadline := time.Now().Add(6 * c.nodes[0].cfg.RoleLeaseTimeout)
	for time.Now().Before(deadline) {
		s0, _ := regs[0].serving(c.nodes[0].mono(c.nodes[0].clk.Now()))
		s1, _ := regs[1].serving(c.nodes[1].mono(c.nodes[1].clk.Now()))
		switch {
		case s0 && s1:
			both++
		case s0 || s1:
			one++
		}
		time.Sleep(2 * time.Millisecond)
	}
	require.Zero(t, both, "moments when both actives held a lease")
	require.Positive(t, one, "one of them served")
}
