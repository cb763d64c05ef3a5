package aegis

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

func TestPassiveEjection(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.HeartbeatInterval = 100 * time.Millisecond
		cfg.HeartbeatTimeout = time.Second
		cfg.EjectBaseTime = 300 * time.Millisecond
	})
	var broken atomic.Bool
	broken.Store(true)
	counts := c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		if req.InstanceID == "c-1" && broken.Load() {
			return nil, &RemoteError{Code: CodeUnavailable, Message: "wedged"}
		}
		return nil, nil
	})
	log0 := subscribeLog(c.nodes[0])
	for i := 0; i < 30; i++ {
		_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
		require.NoError(t, err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		return log0.has(EventEjected, "c-1", StatusHealthy, "consecutive-failures")
	}, "c-1 ejected")
	require.LessOrEqual(t, counts[1].Load(), int64(4), "ejected after 3 failures")
	broken.Store(false)
	testutil.Eventually(t, 5*time.Second, func() bool {
		return log0.has(EventReinstated, "c-1", StatusHealthy, "ejection-expired")
	}, "c-1 reinstated")
	before := counts[1].Load()
	for i := 0; i < 30; i++ {
		_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
		require.NoError(t, err)
	}
	require.Greater(t, counts[1].Load(), before, "c-1 back in rotation")
}

