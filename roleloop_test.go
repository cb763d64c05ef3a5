package aegis

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

// A node without role members does not wake its role loop every
// RoleLeaseTimeout/4; one with a member does, from its registration on,
// and stops again once the member is gone.
func TestRoleLoopIdleWithoutMembers(t *testing.T) {
	c := newCluster(t, 1, true, roleConfig)
	nd := c.nodes[0]
	period := nd.cfg.RoleLeaseTimeout / 4
	runs := func() uint64 { return nd.roleRuns.Load() }

	// The first timer, armed at start, fires once; nothing re-arms it.
	c.clk.Advance(period)
	testutil.Eventually(t, 5*time.Second, func() bool { return runs() == 1 }, "the first timer fires once")
	for range 10 {
		c.clk.Advance(period)
	}
	time.Sleep(20 * time.Millisecond)
	require.Equal(t, uint64(1), runs(), "no role members: no more passes")

	reg, err := nd.Register(context.Background(), Service{Name: "db", InstanceID: "db-0", Role: RoleActive, Promotion: PromoteAlways, Handler: echoHandler})
	require.NoError(t, err)
	testutil.Eventually(t, 5*time.Second, func() bool { return runs() >= 2 }, "registering a member kicks the loop")
	time.Sleep(20 * time.Millisecond) // kicks from the registry's role-group report
	for range 4 {
		before := runs()
		c.clk.Advance(period)
		testutil.Eventually(t, 5*time.Second, func() bool { return runs() > before }, "a pass every period while a member runs (had %d)", before)
	}

	require.NoError(t, reg.Deregister(context.Background()))
	time.Sleep(20 * time.Millisecond)
	c.clk.Advance(period) // the armed timer's pass finds no member and does not re-arm
	time.Sleep(20 * time.Millisecond)
	idle := runs()
	for range 10 {
		c.clk.Advance(period)
	}
	time.Sleep(20 * time.Millisecond)
	require.LessOrEqual(t, runs(), idle+1, "idle again once the member is gone (a kick from its deregistration may still come)")
}
