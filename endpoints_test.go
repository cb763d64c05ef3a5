package aegis

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

func TestEndpointsOnlyInstance(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	ctx := context.Background()
	eps := map[string]string{"grpc": "10.0.0.5:50051", "http": "http://10.0.0.5:8080"}
	_, err := c.nodes[0].Register(ctx, Service{Name: "api", InstanceID: "api-1", Endpoints: eps})
	require.NoError(t, err, "discovery and health only: no Handler needed")
	eps["grpc"] = "changed after Register"
	testutil.Eventually(t, 5*time.Second, func() bool { return len(c.nodes[1].HealthyInstances("api")) == 1 }, "gossiped")
	in := c.nodes[1].HealthyInstances("api")[0]
	require.Equal(t, map[string]string{"grpc": "10.0.0.5:50051", "http": "http://10.0.0.5:8080"}, in.Endpoints)

	_, err = c.nodes[1].Call(ctx, "api", "get", nil)
	var re *RemoteError
	require.True(t, errors.As(err, &re), "%v", err)
	require.Equal(t, CodeNoHandler, re.Code)

	bad := []map[string]string{
		{"a b": "h:1"}, {"grpc": ""}, {"grpc": "h 1"}, {"grpc": strings.Repeat("h", 257)}, {strings.Repeat("k", 33): "h:1"},
	}
	for _, b := range bad {
		_, err := c.nodes[0].Register(ctx, Service{Name: "api", Endpoints: b})
		require.ErrorIs(t, err, ErrInvalidService, "%v", b)
	}
	_, err = c.nodes[0].Register(ctx, Service{Name: "api"})
	require.ErrorIs(t, err, ErrInvalidService, "neither Handler nor Endpoints")
	big := map[string]string{}
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		big[k] = strings.Repeat("x", 200)
	}
	_, err = c.nodes[0].Register(ctx, Service{Name: "api", Endpoints: big})
	require.ErrorIs(t, err, ErrRecordTooLarge, "endpoints count toward MaxRecordSize")
}
