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
		cfg.EjectBaseTime = time.Second
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
	// HealthyInstances says exactly what routing may pick: not c-1 while
	// it is ejected (though it is still healthy and listed by Instances).
	require.Equal(t, []string{"c-0", "c-2"}, ids(c.nodes[0].HealthyInstances("count")))
	require.Len(t, c.nodes[0].Instances("count"), 3)
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

func ids(insts []Instance) []string {
	out := make([]string, 0, len(insts))
	for _, in := range insts {
		out = append(out, in.ID)
	}
	return out
}

func TestReportResultEjects(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	nd := c.nodes[0]
	nd.ReportResult("svc", "nope", false) // unknown: ignored
	for range nd.cfg.EjectAfterFailures - 1 {
		nd.ReportResult("svc", "inst-1", false)
	}
	nd.ReportResult("svc", "inst-1", true) // an answer clears the count
	for range nd.cfg.EjectAfterFailures - 1 {
		nd.ReportResult("svc", "inst-1", false)
	}
	require.Len(t, nd.HealthyInstances("svc"), 2)
	nd.ReportResult("svc", "inst-1", false)
	require.Len(t, nd.HealthyInstances("svc"), 1, "ejected after EjectAfterFailures failures in a row")
	require.Equal(t, "inst-0", nd.HealthyInstances("svc")[0].ID)
	for _, in := range nd.Instances("svc") {
		require.Equal(t, in.ID == "inst-1", in.Ejected, "Instance.Ejected of %s", in.ID)
	}
}
