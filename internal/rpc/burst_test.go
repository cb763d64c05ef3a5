// This file measures how soon slow handlers start when a burst of calls reaches a connection warmed by fast ones.

package rpc

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// burstResult is what one burst of slow calls measured: for each call, the
// time from the caller's Call to its handler's start, and the whole burst's
// duration (first Call to last answer).
type burstResult struct {
	startDelays []time.Duration // sorted
	total       time.Duration
}

func (r burstResult) p50() time.Duration { return r.startDelays[len(r.startDelays)/2] }
func (r burstResult) max() time.Duration { return r.startDelays[len(r.startDelays)-1] }

// runSlowBurst warms one loopback TCP connection with fast calls, so the
// server's reader runs handlers inline, then makes n concurrent calls on it
// to a handler that sleeps for sleep. The in-flight cap is raised above n so
// that it does not hold the burst back.
func runSlowBurst(t testing.TB, n int, sleep time.Duration) burstResult {
	t.Helper()
	epoch := time.Now()
	starts := make([]atomic.Int64, n) // handler start, ns since epoch
	srv := startServer(t, netKinds[0], "", func(ctx context.Context, req *Request) Response {
		if req.Method == "slow" {
			starts[req.Attempt].Store(int64(time.Since(epoch)))
			time.Sleep(sleep)
		}
		return Response{}
	}, ServerOptions{MaxInflightPerConn: 2 * n})
	c := newTestClient(t, netKinds[0], ClientOptions{})
	ctx := context.Background()
	for range 200 {
		_, err := c.Call(ctx, srv.addr, &Request{Method: "fast"})
		require.NoError(t, err)
	}

	sent := make([]time.Duration, n)
	errs := make([]error, n)
	var ready, done sync.WaitGroup
	ready.Add(n)
	done.Add(n)
	begin := make(chan struct{})
	for i := range n {
		go func() {
			defer done.Done()
			ready.Done()
			<-begin
			sent[i] = time.Since(epoch)
			_, errs[i] = c.Call(ctx, srv.addr, &Request{Method: "slow", Attempt: uint32(i)})
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(begin)
	done.Wait()
	r := burstResult{total: time.Since(t0), startDelays: make([]time.Duration, n)}
	for i := range n {
		require.NoError(t, errs[i])
		r.startDelays[i] = time.Duration(starts[i].Load()) - sent[i]
	}
	slices.Sort(r.startDelays)
	require.Equal(t, int32(1), srv.ln.accepted.Load(), "all on one connection")
	return r
}

// A burst of slow calls on a connection whose handlers have been fast runs
// side by side at once: no handler waits for the one before it to be
// found slow. The bounds are generous (the race detector on a loaded
// 2-core machine); calls started one after another would take n times
// longer.
func TestSlowBurstStartsPromptly(t *testing.T) {
	const sleep = 200 * time.Millisecond
	for _, n := range []int{100, 1000} {
		r := runSlowBurst(t, n, sleep)
		t.Logf("burst of %d: handler start delay p50 %v, max %v; burst took %v",
			n, r.p50(), r.max(), r.total)
		require.Less(t, r.max(), 100*time.Millisecond, "burst of %d: latest handler start", n)
		require.Less(t, r.total, sleep+150*time.Millisecond, "burst of %d: whole burst", n)
	}
}

// BenchmarkSlowBurst reports the handler start delays (p50, max) and the
// burst's duration for bursts of one-second calls on a warmed connection:
//
//	go test -run x -bench SlowBurst -benchtime 1x ./internal/rpc/
func BenchmarkSlowBurst(b *testing.B) {
	for _, n := range []int{100, 5000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for range b.N {
				r := runSlowBurst(b, n, time.Second)
				b.ReportMetric(float64(r.p50().Microseconds()), "p50-start-µs")
				b.ReportMetric(float64(r.max().Microseconds()), "max-start-µs")
				b.ReportMetric(float64(r.total.Milliseconds()), "burst-ms")
			}
		})
	}
}
