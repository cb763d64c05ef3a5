package aegisgrpc

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/aegisipc/aegis"
)

// TestRoutingFollowsHealth: real servers gain and lose traffic as their
// instances register, turn unhealthy, recover, are ejected and reinstated,
// and deregister; an instance out of the routing set gets no RPC at all.
func TestRoutingFollowsHealth(t *testing.T) {
	node := newNode(t, 2*time.Second)
	s := []*testServer{startServer(t), startServer(t), startServer(t), startServer(t)}
	regs := []*aegis.Registration{register(t, node, "s0", s[0].addr), register(t, node, "s1", s[1].addr),
		register(t, node, "s2", s[2].addr)}
	cc, b := dialTest(t, node)
	check(t, cc, 1)
	waitLive(t, b, "s0", "s1", "s2")
	check(t, cc, 60)
	for i := 0; i < 3; i++ {
		require.Positive(t, s[i].hits.Load(), "s%d", i)
	}

	regs[2].SetStatus(aegis.StatusUnhealthy)
	waitLive(t, b, "s0", "s1")
	resetHits(s...)
	check(t, cc, 100)
	require.Zero(t, s[2].hits.Load(), "unhealthy instance picked")

	regs[2].SetStatus(aegis.StatusHealthy) // recovery
	waitLive(t, b, "s0", "s1", "s2")
	require.Eventually(t, func() bool { check(t, cc, 10); return s[2].hits.Load() > 0 }, 5*time.Second, time.Millisecond)

	for i := 0; i < 3; i++ {
		node.ReportResult("svc", "s1", false)
	}
	waitLive(t, b, "s0", "s2")
	resetHits(s...)
	check(t, cc, 100)
	require.Zero(t, s[1].hits.Load(), "ejected instance picked")
	waitLive(t, b, "s0", "s1", "s2") // reinstated after EjectBaseTime

	reg3 := register(t, node, "s3", s[3].addr)
	waitLive(t, b, "s0", "s1", "s2", "s3")
	require.Eventually(t, func() bool { check(t, cc, 10); return s[3].hits.Load() > 0 }, 5*time.Second, time.Millisecond)
	require.NoError(t, reg3.Deregister(context.Background()))
	waitLive(t, b, "s0", "s1", "s2")
	resetHits(s...)
	check(t, cc, 60)
	require.Zero(t, s[3].hits.Load(), "deregistered instance picked")
}

// TestKilledServerCostsNoRequests: a server stopped abruptly while clients
// call in a loop (its instance still registered, as before Aegis notices
// a crash) costs no failed RPC: retries go to another instance.
func TestKilledServerCostsNoRequests(t *testing.T) {
	node := newNode(t, time.Second)
	s := []*testServer{startServer(t), startServer(t), startServer(t)}
	for i, srv := range s {
		register(t, node, []string{"s0", "s1", "s2"}[i], srv.addr)
	}
	cc, b := dialTest(t, node)
	check(t, cc, 1)
	waitLive(t, b, "s0", "s1", "s2")
	client := healthpb.NewHealthClient(cc)
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	s[2].srv.Stop()
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	require.Zero(t, failed.Load(), "first error: %v", firstErr.Load())
	require.Greater(t, ok.Load(), int64(100))
}

// TestUnavailableIsRetriedElsewhereAndEjects: a server answering
// Unavailable costs no failed RPC (the retry prefers another instance) and
// is ejected after EjectAfterFailures of them; application errors from
// another server eject nothing.
func TestUnavailableIsRetriedElsewhereAndEjects(t *testing.T) {
	node := newNode(t, 10*time.Second)
	var ejected sync.Map
	cancel := node.Subscribe(func(ev aegis.Event) {
		if ev.Type == aegis.EventEjected {
			ejected.Store(ev.Instance.ID, true)
		}
	})
	defer cancel()
	s := []*testServer{startServer(t), startServer(t), startServer(t)}
	for i, srv := range s {
		register(t, node, []string{"s0", "s1", "s2"}[i], srv.addr)
	}
	cc, b := dialTest(t, node)
	check(t, cc, 1)
	waitLive(t, b, "s0", "s1", "s2")

	// NotFound is an application error: the instances answered.
	client := healthpb.NewHealthClient(cc)
	for i := 0; i < 30; i++ {
		_, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "unknown"})
		require.Equal(t, codes.NotFound, status.Code(err))
	}
	s[0].unavailable.Store(true)
	check(t, cc, 30)
	waitLive(t, b, "s1", "s2")
	_, s0 := ejected.Load("s0")
	require.True(t, s0)
	n := 0
	ejected.Range(func(any, any) bool { n++; return true })
	require.Equal(t, 1, n, "only s0 ejected")
}

// TestConsistentHashByMetadata: with WithHashKey, RPCs carrying the same
// key value go to the same instance; different values spread.
func TestConsistentHashByMetadata(t *testing.T) {
	node := newNode(t, 10*time.Second)
	s := []*testServer{startServer(t), startServer(t), startServer(t)}
	for i, srv := range s {
		register(t, node, []string{"s0", "s1", "s2"}[i], srv.addr)
	}
	cc, b := dialTest(t, node, WithHashKey("X-User"))
	check(t, cc, 1)
	waitLive(t, b, "s0", "s1", "s2")
	// RPCs without the key are spread at random: once each server got
	// some, every connection is READY.
	require.Eventually(t, func() bool {
		check(t, cc, 5)
		return s[0].hits.Load() > 0 && s[1].hits.Load() > 0 && s[2].hits.Load() > 0
	}, 5*time.Second, time.Millisecond)
	client := healthpb.NewHealthClient(cc)
	used := 0
	for u := 0; u < 20; u++ {
		resetHits(s...)
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user", string(rune('a'+u)))
		for i := 0; i < 10; i++ {
			_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
			require.NoError(t, err)
		}
		got := 0
		for i := range s {
			if s[i].hits.Load() > 0 {
				got++
				used |= 1 << i
			}
		}
		require.Equal(t, 1, got, "user %d spread over %d instances", u, got)
	}
	require.Equal(t, 7, used, "20 users all on fewer than 3 instances")
}

// TestStreamThroughDial: a server-streaming RPC (Health/Watch) goes
// through Dial's stream interceptor and the picker.
func TestStreamThroughDial(t *testing.T) {
	node := newNode(t, 10*time.Second)
	s := startServer(t)
	register(t, node, "s0", s.addr)
	cc, err := Dial(node, "svc", WithDialOptions(grpc.WithTransportCredentials(insecure.NewCredentials())))
	require.NoError(t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	resp, err := stream.Recv()
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.Status)
}
