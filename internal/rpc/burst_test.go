// This file measures how soon slow handlers start when a burst of calls reaches a connection warmed by fast ones.

package rpc

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// burstResult is what one burst of slow calls measured: for each call, the
// time from its sending to its handler's start; the time from the first
// handler's start to the last's; the whole burst's duration (first send to
// last answer); and how many times the monitor took the reader role from a
// handler during the burst.
type burstResult struct {
	startDelays []time.Duration // sorted
	startSpread time.Duration
	total       time.Duration
	handoffs    uint64
}

func (r burstResult) p50() time.Duration { return r.startDelays[len(r.startDelays)/2] }
func (r burstResult) max() time.Duration { return r.startDelays[len(r.startDelays)-1] }

// burstServer serves, over loopback TCP, fast calls and calls of method
// "slow" that sleep; a slow call's Attempt numbers it in starts, which
// records when its handler started.
type burstServer struct {
	*testServer
	epoch  time.Time
	starts []atomic.Int64 // handler starts, ns since epoch
}

// startBurstServer starts a burstServer for bursts of n slow calls, with the
// in-flight cap raised above n so that it does not hold a burst back.
func startBurstServer(t testing.TB, n int, sleep time.Duration) *burstServer {
	bs := &burstServer{epoch: time.Now(), starts: make([]atomic.Int64, n)}
	bs.testServer = startServer(t, netKinds[0], "", func(ctx context.Context, req *Request) Response {
		if req.Method == "slow" {
			bs.starts[req.Attempt].Store(int64(bs.since()))
			time.Sleep(sleep)
		}
		return Response{}
	}, ServerOptions{MaxInflightPerConn: 2 * n})
	return bs
}

func (bs *burstServer) since() time.Duration { return time.Since(bs.epoch) }

// result turns the send times of the burst's calls into its result;
// handoffs is the monitor's count when the burst began.
func (bs *burstServer) result(sent []time.Duration, total time.Duration, handoffs uint64) burstResult {
	r := burstResult{
		total:       total,
		startDelays: make([]time.Duration, len(sent)),
		handoffs:    bs.stats.handoffs.Load() - handoffs,
	}
	first, last := time.Duration(1<<63-1), time.Duration(0)
	for i, s := range sent {
		start := time.Duration(bs.starts[i].Load())
		first, last = min(first, start), max(last, start)
		r.startDelays[i] = start - s
	}
	r.startSpread = last - first
	slices.Sort(r.startDelays)
	return r
}

// clientSlowBurst warms one Client connection with fast calls, so the
// server's reader runs handlers inline, then makes n concurrent slow calls
// on it. Each call's delay counts from its Call, so it includes the
// Client's own work for the burst.
func clientSlowBurst(t testing.TB, n int, sleep time.Duration) burstResult {
	t.Helper()
	bs := startBurstServer(t, n, sleep)
	c := newTestClient(t, netKinds[0], ClientOptions{})
	ctx := context.Background()
	for range 200 {
		_, err := c.Call(ctx, bs.addr, &Request{Method: "fast"})
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
			sent[i] = bs.since()
			_, errs[i] = c.Call(ctx, bs.addr, &Request{Method: "slow", Attempt: uint32(i)})
		}()
	}
	ready.Wait()
	handoffs := bs.stats.handoffs.Load()
	t0 := time.Now()
	close(begin)
	done.Wait()
	total := time.Since(t0)
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, int32(1), bs.ln.accepted.Load(), "all on one connection")
	return bs.result(sent, total, handoffs)
}

// rawSlowBurst warms a plain connection with fast calls made one at a time,
// then writes n slow requests in one write. Each call's delay counts from
// just before that write, so it is the server's alone.
func rawSlowBurst(t testing.TB, n int, sleep time.Duration) burstResult {
	t.Helper()
	bs := startBurstServer(t, n, sleep)
	conn, err := net.Dial("tcp", bs.addr)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(sleep+promptly)))
	fr := newFrameReader(conn, DefaultMaxFrameSize, KindResponse)
	for i := range 200 {
		_, err := conn.Write(appendRequestFrame(nil, &Request{Method: "fast"}, uint64(i+1), 0))
		require.NoError(t, err)
		_, _, _, err = fr.next()
		require.NoError(t, err)
	}
	var burst []byte
	for i := range n {
		burst = appendRequestFrame(burst, &Request{Method: "slow", Attempt: uint32(i)}, uint64(1000+i), 0)
	}
	handoffs := bs.stats.handoffs.Load()
	t0 := time.Now()
	at := bs.since()
	_, err = conn.Write(burst)
	require.NoError(t, err)
	for range n {
		_, _, _, err := fr.next()
		require.NoError(t, err)
	}
	total := time.Since(t0)
	sent := make([]time.Duration, n)
	for i := range sent {
		sent[i] = at
	}
	return bs.result(sent, total, handoffs)
}

// A burst of slow calls on a connection whose handlers have been fast runs
// side by side at once: the monitor takes the reader role from the first
// slow handler and the requests behind it start without waiting for it,
// instead of each being run inline until the monitor's next look (over a
// millisecond each, until the first handler returned). The wall-clock
// bound is generous, for the race detector on a loaded 2-core machine:
// every handler starts before the first one returns, so all run at once.
func TestSlowBurstStartsPromptly(t *testing.T) {
	const sleep = time.Second // generous: under -race on a loaded machine the test's own 1,000 callers start slowly
	warmGoroutines(3000)
	for _, n := range []int{100, 1000} {
		for _, v := range burstVariants {
			r := v.run(t, n, sleep)
			t.Logf("%s burst of %d: handler start delay p50 %v, max %v; burst took %v; %d hand-offs",
				v.name, n, r.p50(), r.max(), r.total, r.handoffs)
			require.LessOrEqual(t, r.handoffs, uint64(3), "%s burst of %d: monitor hand-offs", v.name, n)
			require.Less(t, r.startSpread, sleep, "%s burst of %d: first to last handler start", v.name, n)
		}
	}
}

// burstVariants are the two ways of making a burst.
var burstVariants = []struct {
	name string
	run  func(testing.TB, int, time.Duration) burstResult
}{{"raw", rawSlowBurst}, {"client", clientSlowBurst}}

// warmGoroutines has n goroutines exist at once, so that the runtime (and
// the race detector) have set up that many before a burst needs them: the
// first creation of a thousand goroutines in a process under the race
// detector takes longer than the bounds above.
func warmGoroutines(n int) {
	var wg sync.WaitGroup
	release := make(chan struct{})
	wg.Add(n)
	for range n {
		go func() {
			defer wg.Done()
			<-release
		}()
	}
	close(release)
	wg.Wait()
}

// BenchmarkSlowBurst reports the handler start delays (p50, max) and the
// burst's duration for bursts of one-second calls on a warmed connection,
// made by concurrent callers of a Client (client) and written at once on a
// plain connection (raw: the server's part alone). The process has had as
// many goroutines as a burst needs before it, as after any first burst:
// creating thousands of goroutines for the first time takes the runtime
// tens of milliseconds more.
//
//	go test -run x -bench SlowBurst -benchtime 1x ./internal/rpc/
func BenchmarkSlowBurst(b *testing.B) {
	for _, n := range []int{100, 5000} {
		warmGoroutines(3 * n)
		for _, v := range burstVariants {
			b.Run(fmt.Sprintf("%s/n=%d", v.name, n), func(b *testing.B) {
				for range b.N {
					r := v.run(b, n, time.Second)
					b.ReportMetric(float64(r.p50().Microseconds()), "p50-start-µs")
					b.ReportMetric(float64(r.max().Microseconds()), "max-start-µs")
					b.ReportMetric(float64(r.total.Milliseconds()), "burst-ms")
				}
			})
		}
	}
}
