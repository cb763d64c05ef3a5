package aegis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

// counting registers service "count" on every node with a handler that
// counts calls per instance, and waits until node 0 sees them all.
func (c *cluster) counting(h Handler) []*atomic.Int64 {
	c.t.Helper()
	counts := make([]*atomic.Int64, len(c.nodes))
	for i, nd := range c.nodes {
		cnt := &atomic.Int64{}
		counts[i] = cnt
		_, err := nd.Register(context.Background(), Service{Name: "count", InstanceID: fmt.Sprintf("c-%d", i),
			Handler: func(ctx context.Context, req *Request) ([]byte, error) {
				cnt.Add(1)
				if h != nil {
					return h(ctx, req)
				}
				return req.Payload, nil
			}})
		require.NoError(c.t, err)
	}
	for _, nd := range c.nodes {
		testutil.Eventually(c.t, 10*time.Second, func() bool { return len(nd.HealthyInstances("count")) == len(c.nodes) }, "count instances visible")
	}
	return counts
}

// callSuite runs the call tests on the in-memory network and over TCP.
func callSuite(t *testing.T, f func(t *testing.T, opts ...clusterOpt)) {
	t.Run("mem", func(t *testing.T) { f(t) })
	t.Run("tcp", func(t *testing.T) { f(t, overTCP) })
}

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	callSuite(t, func(t *testing.T, opts ...clusterOpt) {
		c := newCluster(t, 3, false, opts...)
		counts := c.counting(nil)
		for i := 0; i < 300; i++ {
			out, err := c.nodes[0].Call(context.Background(), "count", "echo", []byte("hi"))
			require.NoError(t, err)
			require.Equal(t, "hi", string(out))
		}
		for _, cnt := range counts {
			require.InDelta(t, 100, cnt.Load(), 1)
		}
	})
}

func TestFailoverSurvivesAbruptShutdown(t *testing.T) {
	callSuite(t, func(t *testing.T, opts ...clusterOpt) {
		c := newCluster(t, 4, false, opts...)
		c.counting(nil)
		const callers, total = 4, 5000
		var done, failed atomic.Int64
		var firstErr atomic.Value
		var wg sync.WaitGroup
		for g := 0; g < callers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < total/callers; i++ {
					_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "echo", []byte("x"))
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
					done.Add(1)
				}
			}()
		}
		testutil.Eventually(t, 30*time.Second, func() bool { return done.Load() >= total/5 }, "calls under way")
		require.NoError(t, c.nodes[3].Shutdown())
		wg.Wait()
		require.Zero(t, failed.Load(), "CallWithFailover let calls fail: %v", firstErr.Load())
	})
}

func TestPlainCallSeesFailures(t *testing.T) {
	c := newCluster(t, 4, false)
	c.counting(nil)
	require.NoError(t, c.nodes[3].Shutdown())
	// Until memberlist declares node-03 dead, round robin keeps picking it.
	var errs int
	for i := 0; i < 20; i++ {
		if _, err := c.nodes[0].Call(context.Background(), "count", "echo", nil); err != nil {
			require.ErrorIs(t, err, ErrInstanceUnavailable)
			errs++
		}
	}
	require.NotZero(t, errs)
}

func TestExclusion(t *testing.T) {
	c := newCluster(t, 3, false)
	counts := c.counting(nil)
	for i := 0; i < 30; i++ {
		_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "echo", nil, WithExclude("c-1"))
		require.NoError(t, err)
	}
	require.Zero(t, counts[1].Load())
	_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "echo", nil, WithExclude("c-0", "c-1", "c-2"))
	require.ErrorIs(t, err, ErrNoHealthyInstances)
	_, err = c.nodes[0].Call(context.Background(), "count", "echo", nil, WithExclude("c-0", "c-1", "c-2"))
	require.ErrorIs(t, err, ErrNoHealthyInstances)
}

func TestHandlerErrors(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) { cfg.RetryBudgetMinPerSecond = 1000 })
	counts := c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		switch req.Method {
		case "fail":
			return nil, errors.New("bad input")
		case "busy":
			if req.InstanceID != "c-2" {
				return nil, Retryable(errors.New("overloaded"))
			}
			return []byte("ok from " + req.InstanceID), nil
		case "panic":
			panic("boom")
		}
		return req.Payload, nil
	})
	ctx := context.Background()
	sum := func() (s int64) {
		for _, c := range counts {
			s += c.Load()
		}
		return s
	}

	before := sum()
	_, err := c.nodes[0].CallWithFailover(ctx, "count", "fail", nil)
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	require.Equal(t, CodeHandler, re.Code)
	require.Equal(t, "bad input", re.Message)
	require.False(t, re.Retryable)
	require.Equal(t, before+1, sum(), "a non-retryable error is not retried")

	for i := 0; i < 6; i++ {
		out, err := c.nodes[0].CallWithFailover(ctx, "count", "busy", nil)
		require.NoError(t, err)
		require.Equal(t, "ok from c-2", string(out))
	}

	_, err = c.nodes[0].CallWithFailover(ctx, "count", "busy", nil, WithExclude("c-2"))
	var fe *FailoverError
	require.ErrorAs(t, err, &fe)
	require.Len(t, fe.Attempts, 2)
	require.ErrorIs(t, err, ErrNoHealthyInstances)
	require.ErrorAs(t, err, &re)
	require.True(t, re.Retryable)

	_, err = c.nodes[0].Call(ctx, "count", "panic", nil)
	require.ErrorAs(t, err, &re)
	require.Equal(t, CodePanic, re.Code)
	require.Contains(t, re.Message, "boom")
	for i := 0; i < 3; i++ {
		_, err := c.nodes[0].Call(ctx, "count", "echo", nil)
		require.NoError(t, err, "the node keeps serving after a panic")
	}
}

func TestDeadlineHoldsAcrossAttempts(t *testing.T) {
	c := newCluster(t, 3, false)
	var started atomic.Int64
	c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		started.Add(1)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Second):
			return nil, nil
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.nodes[0].CallWithFailover(ctx, "count", "slow", nil)
	took := time.Since(start)
	require.ErrorIs(t, err, ErrTimeout)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, took, 2*time.Second, "the 100ms deadline held (took %v)", took)
	require.EqualValues(t, 1, started.Load(), "no attempt after the deadline")
}

func TestCallErrors(t *testing.T) {
	callSuite(t, func(t *testing.T, opts ...clusterOpt) {
		c := newCluster(t, 2, false, append(opts, func(cfg *Config) { cfg.MaxFrameSize = 64 << 10 })...)
		mux := NewMux()
		mux.Handle("echo", echoHandler)
		_, err := c.nodes[1].Register(context.Background(), Service{Name: "muxed", InstanceID: "m-1", Handler: mux.Handler()})
		require.NoError(t, err)
		testutil.Eventually(t, 10*time.Second, func() bool { return len(c.nodes[0].HealthyInstances("muxed")) == 1 }, "visible")
		ctx := context.Background()

		_, err = c.nodes[0].CallWithFailover(ctx, "nope", "echo", nil)
		require.ErrorIs(t, err, ErrServiceNotFound)

		_, err = c.nodes[0].CallWithFailover(ctx, "muxed", "missing", nil)
		var re *RemoteError
		require.ErrorAs(t, err, &re)
		require.Equal(t, CodeUnknownMethod, re.Code)
		require.Contains(t, re.Message, `"missing"`)

		_, err = c.nodes[0].CallWithFailover(ctx, "muxed", "echo", make([]byte, 100<<10))
		require.ErrorIs(t, err, ErrMessageTooLarge)
		out, err := c.nodes[0].CallWithFailover(ctx, "muxed", "echo", []byte("still fine"))
		require.NoError(t, err, "the connection stays usable")
		require.Equal(t, "still fine", string(out))
	})
}

func TestTypedInvoke(t *testing.T) {
	type addReq struct{ A, B int }
	type addResp struct{ Sum int }
	c := newCluster(t, 2, false)
	mux := NewMux()
	HandleTyped(mux, "add", func(ctx context.Context, r addReq) (addResp, error) { return addResp{r.A + r.B}, nil })
	_, err := c.nodes[1].Register(context.Background(), Service{Name: "calc", Handler: mux.Handler()})
	require.NoError(t, err)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(c.nodes[0].HealthyInstances("calc")) == 1 }, "visible")
	resp, err := Invoke[addReq, addResp](context.Background(), c.nodes[0], "calc", "add", addReq{2, 3})
	require.NoError(t, err)
	require.Equal(t, 5, resp.Sum)
	_, err = c.nodes[0].Call(context.Background(), "calc", "add", []byte{0xc1})
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	require.Equal(t, CodeBadRequest, re.Code)
}

func TestLeaveDrainsInFlightCalls(t *testing.T) {
	c := newCluster(t, 3, false)
	release := make(chan struct{})
	var entered atomic.Int64
	c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		if req.Method == "slow" {
			entered.Add(1)
			<-release
		}
		return []byte(req.InstanceID), nil
	})
	res := make(chan error, 1)
	go func() {
		_, err := c.nodes[0].Call(context.Background(), "count", "slow", nil, WithExclude("c-0", "c-1"))
		res <- err
	}()
	testutil.Eventually(t, 5*time.Second, func() bool { return entered.Load() == 1 }, "slow call running on c-2")
	left := make(chan error, 1)
	go func() { left <- c.nodes[2].Leave(context.Background()) }()
	// Peers stop routing to the draining instance at once.
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, in := range c.nodes[0].HealthyInstances("count") {
			if in.ID == "c-2" {
				return false
			}
		}
		return true
	}, "c-2 draining seen by node-00")
	for i := 0; i < 10; i++ {
		out, err := c.nodes[0].CallWithFailover(context.Background(), "count", "echo", nil)
		require.NoError(t, err)
		require.NotEqual(t, "c-2", string(out))
	}
	select {
	case <-left:
		t.Fatal("Leave returned before the in-flight call finished")
	default:
	}
	close(release)
	require.NoError(t, <-res, "the in-flight call completed")
	require.NoError(t, <-left)
}

func TestRetryBudgetStopsFailoverStorm(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) { cfg.RetryBudgetMinPerSecond = 1 })
	counts := c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		return nil, Retryable(errors.New("everyone is down"))
	})
	const calls = 200
	for i := 0; i < calls; i++ {
		_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "x", nil)
		require.Error(t, err)
	}
	var total int64
	for _, cnt := range counts {
		total += cnt.Load()
	}
	// Without a budget this would be 3 attempts per call.
	require.Less(t, total, int64(calls*13/10), "retries stay near 20%% of calls (got %d attempts for %d calls)", total, calls)
}

// One call's allocations, caller and server together, on the in-memory
// network: the request and response frames, the server's request with its
// context and strings, the handler's Request and the dedup entry. Gossip runs
// meanwhile, hence the margin of one.
func TestCallAllocations(t *testing.T) {
	c := newCluster(t, 2, true)
	_, err := c.nodes[1].Register(context.Background(), Service{Name: "echo", Handler: echoHandler})
	require.NoError(t, err)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(c.nodes[0].HealthyInstances("echo")) == 1 }, "echo visible")
	payload := make([]byte, 64)
	budget := 7.0
	if testutil.RaceEnabled {
		budget += 2 // pooled calls and timers are sometimes dropped
	}
	for name, call := range map[string]func(context.Context, string, string, []byte, ...CallOption) ([]byte, error){
		"Call": c.nodes[0].Call, "CallWithFailover": c.nodes[0].CallWithFailover,
	} {
		allocs := testing.AllocsPerRun(500, func() {
			if _, err := call(context.Background(), "echo", "echo", payload); err != nil {
				panic(err)
			}
		})
		t.Logf("%s: %.1f allocations per call", name, allocs)
		require.LessOrEqual(t, allocs, budget, name)
	}
}

// TestHeadersAndKeysThroughANode: WithHeader reaches the handler, and
// WithKey with ConsistentHash sends a key to one instance every time while
// different keys spread over the instances.
func TestHeadersAndKeysThroughANode(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) { cfg.Balancer = ConsistentHash() })
	c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		return []byte(req.InstanceID + " " + req.Header["tenant"]), nil
	})
	ctx := context.Background()
	out, err := c.nodes[0].CallWithFailover(ctx, "count", "x", nil, WithHeader("tenant", "acme"), WithKey("k"))
	require.NoError(t, err)
	first := strings.Fields(string(out))
	require.Equal(t, "acme", first[1], "the header reached the handler")
	for i := 0; i < 20; i++ {
		out, err := c.nodes[i%3].Call(ctx, "count", "x", nil, WithKey("k"))
		require.NoError(t, err)
		require.Equal(t, first[0], strings.Fields(string(out))[0], "key k always reaches the same instance, from every node")
	}
	seen := map[string]bool{}
	for i := 0; i < 60; i++ {
		out, err := c.nodes[0].Call(ctx, "count", "x", nil, WithKey(fmt.Sprintf("key-%d", i)))
		require.NoError(t, err)
		seen[strings.Fields(string(out))[0]] = true
	}
	require.Len(t, seen, 3, "keys spread over every instance")
}

// TestAttemptObserver: every try is reported, failed and successful, with
// its instance, node, same-instance retry count and error.
func TestAttemptObserver(t *testing.T) {
	c := newCluster(t, 3, false)
	c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		if req.InstanceID != "c-2" {
			return nil, Retryable(errors.New("busy"))
		}
		return []byte("ok"), nil
	})
	var mu sync.Mutex
	var seen []Attempt
	observe := func(a Attempt) { mu.Lock(); seen = append(seen, a); mu.Unlock() }
	out, err := c.nodes[0].CallWithFailover(context.Background(), "count", "m", nil,
		WithExclude("c-0"), WithKey(""), WithAttemptObserver(observe))
	require.NoError(t, err)
	require.Equal(t, "ok", string(out))
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, seen)
	last := seen[len(seen)-1]
	require.Equal(t, "c-2", last.InstanceID)
	require.Equal(t, "node-02", last.Node)
	require.NoError(t, last.Err)
	for _, a := range seen[:len(seen)-1] {
		require.Equal(t, "c-1", a.InstanceID)
		require.ErrorContains(t, a.Err, "busy")
		require.Zero(t, a.Try, "a retryable handler error moves on at once")
	}
}
