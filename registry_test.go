package aegis

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

func TestRegisterRules(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	ctx := context.Background()
	for _, tc := range []struct {
		svc  Service
		want error
	}{
		{Service{Name: "", Handler: echoHandler}, ErrInvalidName},
		{Service{Name: "has space", Handler: echoHandler}, ErrInvalidName},
		{Service{Name: "svc:colon", Handler: echoHandler}, ErrInvalidName},
		{Service{Name: strings.Repeat("a", 129), Handler: echoHandler}, ErrInvalidName},
		{Service{Name: "svc", InstanceID: "bad/id", Handler: echoHandler}, ErrInvalidName},
		{Service{Name: "svc", Metadata: map[string]string{"bad key": "v"}, Handler: echoHandler}, ErrInvalidName},
		{Service{Name: "svc", Metadata: map[string]string{"big": string(make([]byte, 2000))}, Handler: echoHandler}, ErrRecordTooLarge},
		{Service{Name: "svc", Role: Role(7), Handler: echoHandler}, ErrInvalidService},
		{Service{Name: "svc"}, ErrInvalidService},
	} {
		_, err := c.nodes[0].Register(ctx, tc.svc)
		require.ErrorIs(t, err, tc.want, "%+v", tc.svc.Name)
		require.Len(t, c.nodes[0].Instances("svc"), 2, "nothing registered")
	}
	_, err := c.nodes[0].Register(ctx, Service{Name: "svc", InstanceID: "inst-0", Handler: echoHandler})
	require.ErrorIs(t, err, ErrDuplicateInstance, "local duplicate")
	_, err = c.nodes[0].Register(ctx, Service{Name: "svc", InstanceID: "inst-1", Handler: echoHandler})
	require.ErrorIs(t, err, ErrDuplicateInstance, "duplicate of a remote instance")
	r, err := c.nodes[0].Register(ctx, Service{Name: "other", Metadata: map[string]string{"zone": "a"}, Handler: echoHandler})
	require.NoError(t, err)
	require.Equal(t, "a", r.Instance().Metadata["zone"])
	require.Contains(t, r.Instance().ID, "other-")
	testutil.Eventually(t, 10*time.Second, func() bool {
		return len(c.nodes[1].Instances("other")) == 1
	}, "metadata instance spreads")
	require.Equal(t, "a", c.nodes[1].Instances("other")[0].Metadata["zone"])
}

func TestDeregister(t *testing.T) {
	c := newCluster(t, 3, false)
	c.waitConverged(10 * time.Second)
	require.NoError(t, c.regs[2].Deregister(context.Background()))
	require.NoError(t, c.regs[2].Deregister(context.Background()))
	for _, nd := range c.nodes {
		testutil.Eventually(t, 10*time.Second, func() bool { return status(nd, "inst-2") == -1 }, "gone on %s", nd.Name())
	}
	// The same ID can be registered again, elsewhere, and wins over the
	// tombstone.
	_, err := c.nodes[0].Register(context.Background(), Service{Name: "svc", InstanceID: "inst-2", Handler: echoHandler})
	require.NoError(t, err)
	for _, nd := range c.nodes {
		testutil.Eventually(t, 10*time.Second, func() bool {
			for _, in := range nd.Instances("svc") {
				if in.ID == "inst-2" {
					return in.Node == c.nodes[0].Name() && in.Status == StatusHealthy
				}
			}
			return false
		}, "re-registered on %s", nd.Name())
	}
}

// TestDeregisterDrains: with a call running, Deregister marks the instance
// draining, waits for the call within ctx, and removes the instance either
// way.
func TestDeregisterDrains(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	entered := make(chan struct{}, 4)
	release := make(chan struct{})
	ctx := context.Background()
	reg := func(id string) *Registration {
		r, err := c.nodes[1].Register(ctx, Service{Name: "slow", InstanceID: id, Handler: func(ctx context.Context, req *Request) ([]byte, error) {
			entered <- struct{}{}
			<-release
			return nil, nil
		}})
		require.NoError(t, err)
		testutil.Eventually(t, 10*time.Second, func() bool {
			for _, in := range c.nodes[0].HealthyInstances("slow") {
				if in.ID == id {
					return true
				}
			}
			return false
		}, "%s visible", id)
		return r
	}
	call := func(id string) chan error {
		res := make(chan error, 1)
		go func() {
			_, err := c.nodes[0].Call(ctx, "slow", "x", nil, WithExclude(allBut(c.nodes[0].Instances("slow"), id)...))
			res <- err
		}()
		<-entered
		return res
	}

	// Cut short by ctx: the instance is removed anyway.
	r1 := reg("s-1")
	res1 := call("s-1")
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err := r1.Deregister(short)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, Status(-1), status1(c.nodes[1], "slow", "s-1"), "removed although a call ran")

	// Waited for: Deregister returns once the call is done.
	r2 := reg("s-2")
	res2 := call("s-2")
	done := make(chan error, 1)
	go func() { done <- r2.Deregister(ctx) }()
	testutil.Eventually(t, 5*time.Second, func() bool { return status1(c.nodes[0], "slow", "s-2") == StatusDraining }, "s-2 draining seen by peers")
	select {
	case <-done:
		t.Fatal("Deregister returned while a call ran")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-done)
	require.NoError(t, <-res2)
	<-res1 // its instance was removed under it; either outcome is fine
	require.Equal(t, Status(-1), status1(c.nodes[1], "slow", "s-2"))
}

// allBut returns the IDs of insts other than id.
func allBut(insts []Instance, id string) []string {
	var out []string
	for _, in := range insts {
		if in.ID != id {
			out = append(out, in.ID)
		}
	}
	return out
}

// status1 returns nd's view of one instance's status, or -1 if unknown.
func status1(nd *Node, service, id string) Status {
	for _, in := range nd.Instances(service) {
		if in.ID == id {
			return in.Status
		}
	}
	return -1
}

// TestRoutingFollowsAddressChange: a newer version of the same incarnation
// that moves an instance to another address is routed to at once.
func TestRoutingFollowsAddressChange(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	nd := c.nodes[0]
	k := instKey{"svc", "inst-1"}
	rec := ownRecord(nd, k)
	require.Len(t, nd.HealthyInstances("svc"), 2, "a snapshot exists before the change")
	moved := rec
	moved.Addr, moved.Seq = "10.9.9.9:7000", rec.Seq+1
	require.True(t, nd.reg.apply(&moved, "registered"))
	var got string
	for _, in := range nd.HealthyInstances("svc") {
		if in.ID == "inst-1" {
			got = in.Addr
		}
	}
	require.Equal(t, "10.9.9.9:7000", got)
	snap := nd.reg.snaps.get("svc")
	for _, in := range snap.routable {
		if in.ID == "inst-1" {
			require.Equal(t, "10.9.9.9:7000", in.Addr, "the routing snapshot follows")
		}
	}
}
