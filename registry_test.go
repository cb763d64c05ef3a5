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

