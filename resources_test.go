package aegis

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/internal/wire"
)

// ownerEverywhere waits until every node sees id as the owner of res.
func ownerEverywhere(t *testing.T, nodes []*Node, res, id string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, nd := range nodes {
			if in, ok := nd.Owner(res); !ok || in.ID != id {
				return false
			}
		}
		return true
	}, "every node sees %s own %s", id, res)
}

func TestClaimRouteTransferRelease(t *testing.T) {
	c := newCluster(t, 3, false)
	c.waitConverged(10 * time.Second)
	ctx := context.Background()
	require.NoError(t, c.regs[1].Claim(ctx, "order-1", "order-2"))
	require.NoError(t, c.regs[1].Claim(ctx, "order-1"), "claiming what it owns is a no-op")
	ownerEverywhere(t, c.nodes, "order-1", "inst-1")
	for _, nd := range c.nodes {
		for range 5 {
			out, err := nd.CallWithFailover(ctx, "svc", "echo", []byte("x"), WithResource("order-1"))
			require.NoError(t, err)
			require.Equal(t, "x", string(out))
		}
	}
	in, ok := c.nodes[0].Owner("order-2")
	require.True(t, ok)
	require.Equal(t, "inst-1", in.ID)
	require.Equal(t, []string{"order-1", "order-2"}, c.regs[1].Resources())

	// Someone else's resource: Claim refuses, naming the owner.
	err := c.regs[2].Claim(ctx, "order-1", "order-3")
	var ce *ClaimError
	require.ErrorAs(t, err, &ce)
	require.ErrorIs(t, err, ErrResourceClaimed)
	require.Len(t, ce.Failed, 1)
	require.Contains(t, ce.Failed["order-1"].Error(), "inst-1")
	ownerEverywhere(t, c.nodes, "order-3", "inst-2") // the rest succeeded

	// A forced transfer moves it; the old owner no longer has it.
	require.NoError(t, c.regs[2].Transfer(ctx, "order-1"))
	ownerEverywhere(t, c.nodes, "order-1", "inst-2")
	testutil.Eventually(t, 5*time.Second, func() bool { return len(c.regs[1].Resources()) == 1 }, "the old owner lost it")
	require.ErrorIs(t, c.regs[1].Release(ctx, "order-1"), ErrNotOwner)
	require.ErrorIs(t, c.regs[1].Release(ctx, "nobody-has-it"), ErrUnknownResource)

	// Release frees it everywhere; a call then names the problem.
	require.NoError(t, c.regs[2].Release(ctx, "order-1"))
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, nd := range c.nodes {
			if _, ok := nd.Owner("order-1"); ok {
				return false
			}
		}
		return true
	}, "released everywhere")
	_, err = c.nodes[0].Call(ctx, "svc", "echo", nil, WithResource("order-1"))
	require.ErrorIs(t, err, ErrUnknownResource)
	_, err = c.nodes[0].Call(ctx, "other", "echo", nil, WithResource("order-2"))
	require.ErrorIs(t, err, ErrUnknownResource)
	require.Contains(t, err.Error(), "not an instance of")

	// Deregistering the owner frees its claims on every node.
	require.NoError(t, c.regs[1].Deregister(ctx))
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, nd := range c.nodes {
			if _, ok := nd.Owner("order-2"); ok {
				return false
			}
		}
		return true
	}, "claims end with the owner")
	require.NoError(t, c.regs[0].Claim(ctx, "order-2"), "and can be claimed again")
	ownerEverywhere(t, c.nodes, "order-2", "inst-0")
}

func TestClaimsEndWhenOwnerNodeFails(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.ReapTimeout, cfg.HeartbeatTimeout = 2*time.Second, time.Second
		cfg.HeartbeatInterval = 200 * time.Millisecond
	})
	c.waitConverged(10 * time.Second)
	require.NoError(t, c.regs[2].Claim(context.Background(), "job-9"))
	ownerEverywhere(t, c.nodes, "job-9", "inst-2")
	require.NoError(t, c.nodes[2].Shutdown())
	// While the owner is unhealthy, calls say so.
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := c.nodes[0].Call(context.Background(), "svc", "echo", nil, WithResource("job-9"))
		return err != nil && strings.Contains(err.Error(), "unhealthy")
	}, "the owner is reported unhealthy")
	in, ok := c.nodes[0].Owner("job-9")
	require.True(t, ok, "still the owner while unhealthy")
	require.Equal(t, StatusUnhealthy, in.Status)
	// Once reaped, the claim is gone.
	testutil.Eventually(t, 15*time.Second, func() bool {
		_, ok0 := c.nodes[0].Owner("job-9")
		_, ok1 := c.nodes[1].Owner("job-9")
		return !ok0 && !ok1
	}, "claim freed when the owner is reaped")
}

func TestInvalidResourcesAndLimit(t *testing.T) {
	c := newCluster(t, 1, false, func(cfg *Config) { cfg.MaxResourcesPerInstance = 3 })
	ctx := context.Background()
	bad := []string{"", strings.Repeat("r", 256), "a b", "tab\there", "x/y", "x\\y", "x*y", "x?y", `x"y`, "x<y", "x>y",
		"x|y", "x#y", "x%y", "x&y", "x{y", "x}y", "x$y", "x!y", "x@y", "x+y", "x=y", "x`y"}
	err := c.regs[0].Claim(ctx, bad...)
	var ce *ClaimError
	require.ErrorAs(t, err, &ce)
	require.Len(t, ce.Failed, len(bad))
	for _, b := range bad {
		require.ErrorIs(t, ce.Failed[b], ErrInvalidResource, "%q", b)
	}
	err = c.regs[0].Claim(ctx, "r1", "r2", "r3", "r4")
	require.ErrorIs(t, err, ErrResourceLimit)
	require.ErrorAs(t, err, &ce)
	require.Len(t, ce.Failed, 1, "three claimed, the fourth refused")
	require.Len(t, c.regs[0].Resources(), 3)
	require.ErrorIs(t, c.regs[0].Release(ctx, "a b"), ErrInvalidResource)
}

func TestConcurrentClaimsResolveTheSameEverywhere(t *testing.T) {
	c := newCluster(t, 3, false)
	c.waitConverged(10 * time.Second)
	// Claims made at once on two nodes, before either hears of the other:
	// applied straight to each registry, then gossiped.
	now := c.nodes[0].clk.Now().UnixNano()
	for i, res := range []string{"a", "b", "c", "d"} {
		early, late := c.regs[1], c.regs[2]
		if i%2 == 1 {
			early, late = late, early
		}
		for j, r := range []*Registration{late, early} {
			claim := wire.Claim{Resource: res, Service: "svc", ID: r.key.id, Node: r.n.name, Gen: 1, Time: now - int64(j)}
			r.n.reg.mu.Lock()
			r.n.reg.applyClaimLocked(&claim, r.n.clk.Now())
			r.n.reg.mu.Unlock()
			r.n.announceClaims(context.Background(), []wire.Claim{claim})
		}
		ownerEverywhere(t, c.nodes, res, early.key.id)
	}
}

func TestManyClaimsConverge(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 claims across 10 nodes; skipped with -short")
	}
	c := newCluster(t, 10, false)
	c.waitConverged(20 * time.Second)
	ctx := context.Background()
	start := time.Now()
	for i, r := range c.regs {
		res := make([]string, 1000)
		for j := range res {
			res[j] = fmt.Sprintf("res-%d-%d", i, j)
		}
		require.NoError(t, r.Claim(ctx, res...))
	}
	claimed := time.Since(start)
	testutil.Eventually(t, 60*time.Second, func() bool {
		for _, nd := range c.nodes {
			nd.reg.mu.RLock()
			n := len(nd.reg.claims)
			nd.reg.mu.RUnlock()
			if n != 10_000 {
				return false
			}
		}
		return true
	}, "every node knows 10,000 claims")
	t.Logf("10,000 claims made in %v, known on every node after %v", claimed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	for i, nd := range c.nodes {
		out, err := nd.CallWithFailover(ctx, "svc", "echo", []byte("y"), WithResource(fmt.Sprintf("res-%d-7", (i+3)%10)))
		require.NoError(t, err)
		require.Equal(t, "y", string(out))
	}
}

func TestClaimsMissedInAPartitionArriveAfterHeal(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.HeartbeatTimeout = 200*time.Millisecond, 2*time.Second
	})
	c.waitConverged(10 * time.Second)
	partitionRoles(c) // node 0 | nodes 1, 2
	testutil.Eventually(t, 15*time.Second, func() bool { return status(c.nodes[0], "inst-1") == StatusUnhealthy }, "partitioned")
	require.NoError(t, c.regs[1].Claim(context.Background(), "seen-late"))
	ownerEverywhere(t, c.nodes[1:], "seen-late", "inst-1")
	time.Sleep(2 * c.nodes[0].cfg.Gossip.PushPullInterval) // no longer a recent claim
	_, ok := c.nodes[0].Owner("seen-late")
	require.False(t, ok, "the partitioned node cannot know yet")
	c.net.Heal()
	ownerEverywhere(t, c.nodes, "seen-late", "inst-1")
}

func TestRouteExplainsOwnersAndActives(t *testing.T) {
	var log runLog
	c, _ := newRoleCluster(t, 3, PromoteWithMajority, &log)
	require.NoError(t, c.regs[2].Claim(context.Background(), "order-5"))
	ownerEverywhere(t, c.nodes, "order-5", "inst-2")
	ri, err := c.nodes[0].Route("svc", "get", WithResource("order-5"))
	require.NoError(t, err)
	require.Equal(t, "inst-2", ri.Instance)
	require.Equal(t, "order-5", ri.Resource)
	require.Contains(t, ri.Reason, "owner of resource")
	_, err = c.nodes[0].Route("svc", "get", WithResource("order-6"))
	require.ErrorIs(t, err, ErrUnknownResource)

	ri, err = c.nodes[1].Route("db", "get")
	require.NoError(t, err)
	require.Equal(t, "db-0", ri.Instance)
	require.Equal(t, uint64(1), ri.Epoch)
	require.Contains(t, ri.Reason, "the active of role group db")
}
