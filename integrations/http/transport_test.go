package aegishttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis"
)

// TestRoutingFollowsHealth: real servers gain and lose requests as their
// instances register, turn unhealthy, recover, are ejected and deregister.
func TestRoutingFollowsHealth(t *testing.T) {
	node := newNode(t, 10*time.Second)
	s := []*testServer{startServer(t, "s0"), startServer(t, "s1"), startServer(t, "s2"), startServer(t, "s3")}
	regs := []*aegis.Registration{register(t, node, "s0", s[0].url), register(t, node, "s1", s[1].url),
		register(t, node, "s2", s[2].url)}
	tr, c := newTransport(t, node)
	waitRouted(t, tr, "s0", "s1", "s2")
	get(t, c, 30)
	for i := 0; i < 3; i++ {
		require.Equal(t, int64(10), s[i].hits.Load(), "round robin, s%d", i)
	}

	regs[2].SetStatus(aegis.StatusUnhealthy)
	waitRouted(t, tr, "s0", "s1")
	resetHits(s...)
	get(t, c, 50)
	require.Zero(t, s[2].hits.Load(), "unhealthy instance picked")
	regs[2].SetStatus(aegis.StatusHealthy)
	waitRouted(t, tr, "s0", "s1", "s2")
	get(t, c, 30)
	require.Positive(t, s[2].hits.Load(), "recovered instance not picked")

	for i := 0; i < 3; i++ {
		node.ReportResult("svc", "s1", false)
	}
	waitRouted(t, tr, "s0", "s2")
	resetHits(s...)
	get(t, c, 50)
	require.Zero(t, s[1].hits.Load(), "ejected instance picked")

	reg3 := register(t, node, "s3", s[3].url)
	waitRouted(t, tr, "s0", "s2", "s3")
	get(t, c, 30)
	require.Positive(t, s[3].hits.Load())
	require.NoError(t, reg3.Deregister(context.Background()))
	waitRouted(t, tr, "s0", "s2")
	resetHits(s...)
	get(t, c, 30)
	require.Zero(t, s[3].hits.Load(), "deregistered instance picked")
}

func TestRewriteAndPassThrough(t *testing.T) {
	node := newNode(t, time.Second)
	s := startServer(t, "s0")
	register(t, node, "s0", s.url+"/base/")
	_, c := newTransport(t, node)
	req, err := http.NewRequest(http.MethodPut, "http://svc.aegis/a%2Fb/c?q=1", strings.NewReader("hello"))
	require.NoError(t, err)
	code, body, err := do(c, req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "s0 /base/a%2Fb/c?q=1 hello", body)

	// Other hosts go to the base transport unchanged.
	req, err = http.NewRequest(http.MethodGet, s.url+"/direct", nil)
	require.NoError(t, err)
	_, body, err = do(c, req)
	require.NoError(t, err)
	require.Equal(t, "s0 /direct ", body)

	_, err = c.Get("http://nothing.aegis/")
	require.ErrorIs(t, err, aegis.ErrNoHealthyInstances)
}

// deadEndpoint returns an http URL on which nothing listens.
func deadEndpoint(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	return "http://" + addr
}

func TestIdempotentFailover(t *testing.T) {
	node := newNode(t, 10*time.Second)
	s := []*testServer{startServer(t, "s1"), startServer(t, "s2")}
	register(t, node, "s0", deadEndpoint(t)) // connection refused
	register(t, node, "s1", s[0].url)
	register(t, node, "s2", s[1].url)
	tr, c := newTransport(t, node, WithAttemptTimeout(200*time.Millisecond))
	waitRouted(t, tr, "s0", "s1", "s2")
	for i := 0; i < 6; i++ { // PUT bodies are replayed to the next instance
		req, err := http.NewRequest(http.MethodPut, "http://svc.aegis/p", strings.NewReader("body"))
		require.NoError(t, err)
		code, body, err := do(c, req)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code)
		require.True(t, strings.HasSuffix(body, " /p body"), body)
	}
	waitRouted(t, tr, "s1", "s2") // s0 failed 3 times: ejected

	s[0].status.Store(http.StatusServiceUnavailable)
	s[1].hang.Store(int64(2 * time.Second))
	for i := 0; i < 4; i++ { // 503 from s1, timeout at s2: no instance left to answer
		start := time.Now()
		code, _, err := do(c, must(http.NewRequest(http.MethodGet, "http://svc.aegis/", nil)))
		require.Less(t, time.Since(start), time.Second)
		if err == nil {
			require.Equal(t, http.StatusServiceUnavailable, code, "the last answer is returned")
		}
	}
	s[0].status.Store(0)
	resetHits(s...)
	start := time.Now()
	code, body, err := do(c, must(http.NewRequest(http.MethodDelete, "http://svc.aegis/d", nil)))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "s1 /d ", body)
	require.Less(t, time.Since(start), time.Second, "a hung instance costs the attempt timeout")
}

func must(req *http.Request, err error) *http.Request {
	if err != nil {
		panic(err)
	}
	return req
}

// TestNonIdempotentSentOnce counts on the servers: a POST is never sent
// twice, whatever its first instance answered.
func TestNonIdempotentSentOnce(t *testing.T) {
	node := newNode(t, 10*time.Second)
	s := []*testServer{startServer(t, "s0"), startServer(t, "s1"), startServer(t, "s2")}
	for i, srv := range s {
		register(t, node, srv.name, srv.url)
		srv.status.Store(int32([]int{502, 503, 504}[i]))
	}
	tr, c := newTransport(t, node, WithAttemptTimeout(300*time.Millisecond))
	waitRouted(t, tr, "s0", "s1", "s2")
	for i := 0; i < 9; i++ {
		code, _, err := do(c, must(http.NewRequest(http.MethodPost, "http://svc.aegis/", strings.NewReader("x"))))
		require.NoError(t, err)
		require.GreaterOrEqual(t, code, 502)
		require.Equal(t, int64(i+1), totalPosts(s...), "POST %d sent more than once", i)
	}
	resetHits(s...)
	for _, srv := range s {
		srv.status.Store(0)
		srv.hang.Store(int64(time.Second))
	}
	_, _, err := do(c, must(http.NewRequest(http.MethodPost, "http://svc.aegis/", strings.NewReader("x"))))
	require.ErrorIs(t, err, errAttemptTimeout)
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, int64(1), totalPosts(s...), "a timed-out POST is not retried")

	// With Idempotency-Key a POST may move, if its body can be replayed.
	for _, srv := range s {
		srv.hang.Store(0)
		srv.status.Store(503)
	}
	resetHits(s...)
	req := must(http.NewRequest(http.MethodPost, "http://svc.aegis/", strings.NewReader("x")))
	req.Header.Set("Idempotency-Key", "k1")
	_, _, err = do(c, req)
	require.NoError(t, err)
	require.Equal(t, int64(3), totalPosts(s...), "tried on every instance")
	resetHits(s...)
	req = must(http.NewRequest(http.MethodPost, "http://svc.aegis/", io.NopCloser(strings.NewReader("x"))))
	req.Header.Set("Idempotency-Key", "k2")
	_, _, err = do(c, req)
	require.NoError(t, err)
	require.Equal(t, int64(1), totalPosts(s...), "a body that cannot be replayed is sent once")
}

// TestKilledServerCostsNoRequests: a server closed abruptly (listener and
// connections) while clients loop, its instance still registered, costs
// no failed GET.
func TestKilledServerCostsNoRequests(t *testing.T) {
	node := newNode(t, time.Second)
	s := []*testServer{startServer(t, "s0"), startServer(t, "s1"), startServer(t, "s2")}
	for _, srv := range s {
		register(t, node, srv.name, srv.url)
	}
	tr, c := newTransport(t, node)
	waitRouted(t, tr, "s0", "s1", "s2")
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
				code, _, err := do(c, must(http.NewRequest(http.MethodGet, "http://svc.aegis/", nil)))
				if err != nil || code != http.StatusOK {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, struct {
						code int
						err  error
					}{code, err})
					continue
				}
				ok.Add(1)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	s[2].kill()
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	require.Zero(t, failed.Load(), "first failure: %v", firstErr.Load())
	require.Greater(t, ok.Load(), int64(100))
}

func TestConsistentHashByHeader(t *testing.T) {
	node := newNode(t, 10*time.Second)
	s := []*testServer{startServer(t, "s0"), startServer(t, "s1"), startServer(t, "s2")}
	for _, srv := range s {
		register(t, node, srv.name, srv.url)
	}
	tr, c := newTransport(t, node, WithHashHeader("x-user"))
	waitRouted(t, tr, "s0", "s1", "s2")
	seen := map[string]bool{}
	for u := 0; u < 20; u++ {
		var first string
		for i := 0; i < 5; i++ {
			req := must(http.NewRequest(http.MethodGet, "http://svc.aegis/", nil))
			req.Header.Set("X-User", string(rune('a'+u)))
			_, body, err := do(c, req)
			require.NoError(t, err)
			name := strings.Fields(body)[0]
			if i == 0 {
				first = name
			}
			require.Equal(t, first, name, "user %d moved", u)
		}
		seen[first] = true
	}
	require.Len(t, seen, 3)
}

// TestReportClearsFailuresOnlyWhenNeeded: failures are reported; the
// success after a failure is reported and clears the count (three in a
// row eject).
func TestReportClearsFailuresOnlyWhenNeeded(t *testing.T) {
	node := newNode(t, 10*time.Second)
	register(t, node, "a", "http://127.0.0.1:1")
	register(t, node, "b", "http://127.0.0.1:2")
	tr, _ := newTransport(t, node)
	to := target{svc: "svc", id: "a", failed: tr.cache.failedFlag("svc", "a")}
	require.Same(t, to.failed, tr.cache.get("svc").failed["a"])
	tr.report(to, true) // nothing to clear: not reported
	tr.report(to, false)
	tr.report(to, false)
	require.True(t, to.failed.Load())
	tr.report(to, true)
	require.False(t, to.failed.Load())
	tr.report(to, false)
	tr.report(to, false)
	time.Sleep(50 * time.Millisecond)
	require.Len(t, node.HealthyInstances("svc"), 2, "the success cleared the count")
	tr.report(to, false)
	require.Eventually(t, func() bool { return len(node.HealthyInstances("svc")) == 1 }, 2*time.Second, 5*time.Millisecond)
}
