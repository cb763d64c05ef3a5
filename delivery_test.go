package aegis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/rpc"
	"github.com/aegisipc/aegis/internal/testutil"
)

// execLog counts handler executions per message ID and per instance.
type execLog struct {
	mu     sync.Mutex
	byID   map[string]int
	byInst map[string]int
}

func newExecLog() *execLog {
	return &execLog{byID: make(map[string]int), byInst: make(map[string]int)}
}

func (l *execLog) record(req *Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byID[req.MessageID]++
	l.byInst[req.InstanceID]++
}

func (l *execLog) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.byID {
		n += c
	}
	return n
}

func (l *execLog) instances() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int, len(l.byInst))
	for k, v := range l.byInst {
		out[k] = v
	}
	return out
}

// register adds an instance of service on nd and waits until every node
// of c sees want healthy instances of it.
func (c *cluster) register(nd *Node, svc Service, want int) *Registration {
	c.t.Helper()
	reg, err := nd.Register(context.Background(), svc)
	require.NoError(c.t, err)
	for _, other := range c.nodes {
		testutil.Eventually(c.t, 10*time.Second, func() bool { return len(other.HealthyInstances(svc.Name)) == want },
			"%s sees %d instances of %s", other.Name(), want, svc.Name)
	}
	return reg
}

// registerPay registers service "pay" (method "charge" declared
// non-idempotent) on nodes 1 and 2 as p-1 and p-2, and returns the log of
// its executions.
func (c *cluster) registerPay() *execLog {
	c.t.Helper()
	log := newExecLog()
	for i := 1; i <= 2; i++ {
		c.register(c.nodes[i], Service{Name: "pay", InstanceID: fmt.Sprintf("p-%d", i), NonIdempotent: []string{"charge"},
			Handler: func(ctx context.Context, req *Request) ([]byte, error) {
				log.record(req)
				return []byte("charged"), nil
			}}, i)
	}
	return log
}

func deliveryConfig(cfg *Config) {
	// These tests pin the same-instance retry path, where dedup makes a
	// handler run once; a hedge deliberately runs an idempotent call on a
	// second instance when the first is slow (a scheduling stall under
	// -race would do), which is tested on its own.
	cfg.HedgeDelay = -1
	cfg.SameInstanceRetries = 10
	cfg.SameInstanceBackoff = time.Millisecond
	cfg.RetryBudgetRatio = 1
	cfg.AttemptTimeout = 2 * time.Second
}

// TestResponseLossExactlyOnce: with 5% of responses lost after the handler
// ran, every call still returns its own result and each message ID ran
// exactly once.
func TestResponseLossExactlyOnce(t *testing.T) {
	c := newCluster(t, 3, false, deliveryConfig)
	log := newExecLog()
	for i, nd := range c.nodes {
		c.register(nd, Service{Name: "ledger", InstanceID: fmt.Sprintf("l-%d", i),
			Handler: func(ctx context.Context, req *Request) ([]byte, error) {
				log.record(req)
				return append([]byte("ok:"), req.Payload...), nil
			}}, i+1)
	}
	c.net.SetResponseLoss(0.05)

	const callers, total = 8, 10000
	var wrong atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			caller := c.nodes[g%len(c.nodes)]
			for i := 0; i < total/callers; i++ {
				p := fmt.Sprintf("%d-%d", g, i)
				out, err := caller.CallWithFailover(context.Background(), "ledger", "post", []byte(p))
				if err != nil || string(out) != "ok:"+p {
					wrong.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("call %s: %q, %v", p, out, err))
				}
			}
		}()
	}
	wg.Wait()
	c.net.SetResponseLoss(0)
	require.Zero(t, wrong.Load(), "first failure: %v", firstErr.Load())

	log.mu.Lock()
	require.Len(t, log.byID, total, "one message ID per call")
	for id, n := range log.byID {
		require.Equal(t, 1, n, "message %s ran %d times", id, n)
	}
	log.mu.Unlock()

	var dups, retries uint64
	for _, nd := range c.nodes {
		dups += nd.Stats().DuplicatesAnswered
		retries += nd.Stats().SameInstanceRetries
	}
	// The loss really happened and was absorbed by same-instance retries
	// answered from the dedup cache.
	require.Greater(t, dups, uint64(total/100), "duplicates answered from cache")
	require.GreaterOrEqual(t, retries, dups)
	t.Logf("%d duplicates answered from cache, %d same-instance retries", dups, retries)
}

// TestDuplicateWaitsForRunningExecution: a retry that arrives while the
// first execution runs waits for it and gets the same result.
func TestDuplicateWaitsForRunningExecution(t *testing.T) {
	c := newCluster(t, 2, false)
	log := newExecLog()
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	var runs atomic.Int64
	c.register(c.nodes[1], Service{Name: "slow", InstanceID: "s-1",
		Handler: func(ctx context.Context, req *Request) ([]byte, error) {
			log.record(req)
			started <- struct{}{}
			<-release
			return []byte(fmt.Sprintf("run %d", runs.Add(1))), nil
		}}, 1)

	type result struct {
		out []byte
		err error
	}
	results := make(chan result, 2)
	call := func() {
		out, err := c.nodes[0].Call(context.Background(), "slow", "do", []byte("x"), WithMessageID("m-1"))
		results <- result{out, err}
	}
	go call()
	<-started
	go call()
	// The second request reached the instance and is waiting on the first.
	testutil.Eventually(t, 5*time.Second, func() bool { return c.nodes[1].Stats().DuplicatesAnswered == 1 }, "duplicate seen")
	close(release)
	for i := 0; i < 2; i++ {
		r := <-results
		require.NoError(t, r.err)
		require.Equal(t, "run 1", string(r.out))
	}
	require.Equal(t, 1, log.total(), "the handler ran once")
	select {
	case <-started:
		t.Fatal("the handler started a second time")
	default:
	}

	// A later retry of the same message ID is answered from the cache.
	out, err := c.nodes[0].Call(context.Background(), "slow", "do", []byte("x"), WithMessageID("m-1"))
	require.NoError(t, err)
	require.Equal(t, "run 1", string(out))
	require.Equal(t, 1, log.total())
	require.EqualValues(t, 2, c.nodes[1].Stats().DuplicatesAnswered)
}

// TestDuplicateGivesUpWithInProgress: a retry whose deadline passes while
// the first execution of its message ID still runs is answered "in
// progress" (not "unavailable", which would let the call move elsewhere),
// and the handler still runs once.
func TestDuplicateGivesUpWithInProgress(t *testing.T) {
	c := newCluster(t, 1, false)
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	c.register(c.nodes[0], Service{Name: "slow", InstanceID: "s-1",
		Handler: func(ctx context.Context, req *Request) ([]byte, error) {
			started <- struct{}{}
			<-release
			return []byte("done"), nil
		}}, 1)
	srv := c.nodes[0].server
	req := func() *rpc.Request {
		return &rpc.Request{Service: "slow", Method: "do", InstanceID: "s-1", MessageID: "m-1"}
	}
	first := make(chan rpc.Response, 1)
	go func() { first <- srv.serveCall(context.Background(), req()) }()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	resp := srv.serveCall(ctx, req())
	require.NotNil(t, resp.Err)
	require.Equal(t, CodeInProgress, resp.Err.Code)
	require.False(t, resp.Err.Retryable)
	o, err := classifyRemote(&Instance{ID: "s-1"}, resp.Err, false, time.Second)
	require.Equal(t, outcomeInProgress, o)
	require.False(t, o.failover(true), "never moved to another instance")
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	close(release)
	require.Nil(t, (<-first).Err)
	select {
	case <-started:
		t.Fatal("the handler ran twice")
	default:
	}
}

// TestFailedExecutionsAreNotCachedAsSuccess: a retryable failure is not
// remembered (the retry runs the handler again); a non-retryable handler
// error is (the handler ran and must not run again).
func TestFailedExecutionsAreNotCachedAsSuccess(t *testing.T) {
	c := newCluster(t, 2, false)
	var runs atomic.Int64
	c.register(c.nodes[1], Service{Name: "flaky", InstanceID: "f-1",
		Handler: func(ctx context.Context, req *Request) ([]byte, error) {
			n := runs.Add(1)
			switch {
			case req.Method == "transient" && n == 1:
				return nil, Retryable(errors.New("busy"))
			case req.Method == "fatal":
				return nil, errors.New("bad input")
			}
			return []byte("done"), nil
		}}, 1)
	ctx := context.Background()

	_, err := c.nodes[0].Call(ctx, "flaky", "transient", nil, WithMessageID("t-1"))
	require.ErrorContains(t, err, "busy")
	out, err := c.nodes[0].Call(ctx, "flaky", "transient", nil, WithMessageID("t-1"))
	require.NoError(t, err)
	require.Equal(t, "done", string(out))
	require.EqualValues(t, 2, runs.Load(), "the retryable failure was not cached")

	_, err = c.nodes[0].Call(ctx, "flaky", "fatal", nil, WithMessageID("f-1"))
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	require.Equal(t, CodeHandler, re.Code)
	_, err = c.nodes[0].Call(ctx, "flaky", "fatal", nil, WithMessageID("f-1"))
	require.ErrorAs(t, err, &re)
	require.Equal(t, "bad input", re.Message)
	require.EqualValues(t, 3, runs.Load(), "the handler error was answered from the cache")
}

// TestNonIdempotentNeverRunsOnSecondInstance: once the first instance may
// have run a non-idempotent method, the call stays on it; an idempotent
// method in the same situation fails over.
func TestNonIdempotentNeverRunsOnSecondInstance(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.SameInstanceRetries = 2
		cfg.SameInstanceBackoff = time.Millisecond
		cfg.RetryBudgetRatio = 1
	})
	log := c.registerPay()
	// Every response is lost: each try reaches a handler (or its dedup
	// cache) and the caller sees the connection reset.
	c.net.SetResponseLoss(1)
	defer c.net.SetResponseLoss(0)

	for i := 0; i < 4; i++ {
		before := log.instances()
		_, err := c.nodes[0].CallWithFailover(context.Background(), "pay", "charge", nil)
		require.ErrorIs(t, err, ErrInstanceUnavailable)
		var fe *FailoverError
		require.ErrorAs(t, err, &fe)
		require.Len(t, fe.Attempts, 3, "1 try + 2 same-instance retries")
		for _, a := range fe.Attempts {
			require.Equal(t, fe.Attempts[0].InstanceID, a.InstanceID, "never moved to another instance")
		}
		after := log.instances()
		ran := 0
		for id, n := range after {
			ran += n - before[id]
		}
		require.Equal(t, 1, ran, "the charge ran exactly once")
	}

	// The same loss with an idempotent method: it moves on.
	_, err := c.nodes[0].CallWithFailover(context.Background(), "pay", "refresh", nil, WithMessageID("r-1"))
	var fe *FailoverError
	require.ErrorAs(t, err, &fe)
	insts := map[string]bool{}
	for _, a := range fe.Attempts {
		insts[a.InstanceID] = true
	}
	require.Len(t, insts, 2, "an idempotent method fails over")
}

// TestNonIdempotentFailsOverWhenUnreachable: when the request provably never
// reached the first instance (it cannot be dialed), a non-idempotent call
// moves to another.
func TestNonIdempotentFailsOverWhenUnreachable(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.AttemptTimeout = 300 * time.Millisecond
		cfg.EjectAfterFailures = 1
	})
	log := c.registerPay()
	events := subscribeLog(c.nodes[0])
	// The caller cannot reach node 1; node 2 still can, so memberlist's
	// indirect probes keep node 1 alive and its instance in the pool.
	c.net.Partition([]string{c.nodes[0].Addr()}, []string{c.nodes[1].Addr()})
	defer c.net.Heal()

	// Round robin sends one of two consecutive calls to p-1 first.
	for i := 0; i < 2; i++ {
		out, err := c.nodes[0].CallWithFailover(context.Background(), "pay", "charge", nil)
		require.NoError(t, err)
		require.Equal(t, "charged", string(out))
	}
	require.Equal(t, map[string]int{"p-2": 2}, log.instances())
	testutil.Eventually(t, 5*time.Second, func() bool {
		return events.has(EventEjected, "p-1", StatusHealthy, "consecutive-failures")
	}, "p-1 was tried, failed and was ejected")
}

// TestDedupWindowAndBound drives the window with the test clock and checks
// the bound: old entries are evicted and a retry after eviction runs again.
func TestDedupWindowAndBound(t *testing.T) {
	c := newCluster(t, 2, true, func(cfg *Config) {
		cfg.DedupWindow = 10 * time.Second
		cfg.DedupMaxEntries = 5
	})
	c.waitConverged(10 * time.Second)
	var runs atomic.Int64
	dreg := c.register(c.nodes[1], Service{Name: "d", InstanceID: "d-1",
		Handler: func(ctx context.Context, req *Request) ([]byte, error) {
			runs.Add(1)
			return []byte(req.MessageID), nil
		}}, 1)
	c.settle()
	call := func(id string) {
		t.Helper()
		out, err := c.nodes[0].Call(context.Background(), "d", "m", nil, WithMessageID(id))
		require.NoError(t, err)
		require.Equal(t, id, string(out))
	}
	for i := 0; i < 7; i++ {
		call(fmt.Sprintf("m%d", i))
	}
	require.EqualValues(t, 7, runs.Load())
	require.EqualValues(t, 2, c.nodes[1].Stats().DedupEvictions, "bound of 5: m0 and m1 evicted")

	call("m6") // cached
	require.EqualValues(t, 7, runs.Load())
	call("m0") // evicted: runs again (and evicts m2)
	require.EqualValues(t, 8, runs.Load())
	require.EqualValues(t, 3, c.nodes[1].Stats().DedupEvictions)

	// Past the window every entry is gone.
	c.advance(11*time.Second, nil)
	call("m6")
	require.EqualValues(t, 9, runs.Load(), "m6 expired and ran again")
	require.EqualValues(t, 1, c.nodes[1].Stats().DuplicatesAnswered)
	// 3 by the bound, then the 5 left expired when m6 came back.
	require.EqualValues(t, 8, c.nodes[1].Stats().DedupEvictions)
	// The counter outlives the instance.
	require.NoError(t, dreg.Deregister(context.Background()))
	require.EqualValues(t, 8, c.nodes[1].Stats().DedupEvictions)
}

// TestDedupByteBound: the cache also holds at most DedupMaxBytes; the oldest
// outcomes go first, and one too big to fit is not remembered at all.
func TestDedupByteBound(t *testing.T) {
	c := newCluster(t, 2, true, func(cfg *Config) {
		cfg.DedupMaxBytes = 8 << 10
	})
	c.waitConverged(10 * time.Second)
	var runs atomic.Int64
	c.register(c.nodes[1], Service{Name: "d", InstanceID: "d-1",
		Handler: func(ctx context.Context, req *Request) ([]byte, error) {
			runs.Add(1)
			size, err := strconv.Atoi(string(req.Payload))
			if err != nil {
				return nil, err
			}
			return make([]byte, size), nil
		}}, 1)
	c.settle()
	call := func(id string, size int) {
		t.Helper()
		out, err := c.nodes[0].Call(context.Background(), "d", "m", []byte(strconv.Itoa(size)), WithMessageID(id))
		require.NoError(t, err)
		require.Len(t, out, size)
	}
	for i := 0; i < 4; i++ { // 4 × 3 KiB: the first two are pushed out
		call(fmt.Sprintf("m%d", i), 3<<10)
	}
	require.EqualValues(t, 4, runs.Load())
	require.EqualValues(t, 2, c.nodes[1].Stats().DedupEvictions)
	call("m3", 3<<10) // still held
	require.EqualValues(t, 4, runs.Load())
	call("m0", 3<<10) // evicted: runs again
	require.EqualValues(t, 5, runs.Load())

	call("big", 16<<10) // over the bound on its own: not remembered...
	call("big", 16<<10)
	require.EqualValues(t, 7, runs.Load())
	call("m0", 3<<10) // ...and it evicted nothing
	require.EqualValues(t, 7, runs.Load())
}
