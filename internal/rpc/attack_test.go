//go:build linux

// This file attacks a Server over loopback TCP with idle and stalled connections while a caller calls.

package rpc

import (
	"context"
	"encoding/binary"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/stretchr/testify/require"
)

// ensureFiles raises the open-file limit to at least n, or skips the test
// if it cannot.
func ensureFiles(t *testing.T, n uint64) {
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	if lim.Cur >= n {
		return
	}
	want := lim
	want.Cur = min(max(n, lim.Cur), lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil || want.Cur < n {
		t.Skipf("needs %d open files; the limit is %d (hard %d) and cannot be raised: %v", n, lim.Cur, lim.Max, err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// attacker holds connections from 127.0.0.2 and records when the server
// closes each of them.
type attacker struct {
	wg      sync.WaitGroup
	closed  atomic.Int32
	mu      sync.Mutex
	slowest time.Duration // longest time from dial to the server's close
}

// open dials n connections to addr from 127.0.0.2, sends each the bytes of
// send (nil: nothing), and waits on each for the server to close it.
func (a *attacker) open(t *testing.T, addr string, n int, send []byte) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: promptly}
	for range n {
		conn, err := d.Dial("tcp", addr)
		require.NoError(t, err)
		dialed := time.Now()
		if send != nil {
			_, err = conn.Write(send)
			require.NoError(t, err)
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer conn.Close()
			var b [1]byte
			for { // until the server closes it
				if _, err := conn.Read(b[:]); err != nil {
					break
				}
			}
			took := time.Since(dialed)
			a.mu.Lock()
			a.slowest = max(a.slowest, took)
			a.mu.Unlock()
			a.closed.Add(1)
		}()
	}
}

// caller calls addr in a loop until stop is closed and records latencies.
func caller(t *testing.T, c *Client, addr string, stop <-chan struct{}) (lat *[]time.Duration, errs *atomic.Int32, done <-chan struct{}) {
	lat, errs = new([]time.Duration), new(atomic.Int32)
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		req := &Request{Service: "svc", Method: "echo", Payload: make([]byte, 64)}
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			_, err := c.Call(context.Background(), addr, req)
			*lat = append(*lat, time.Since(t0))
			if err != nil {
				t.Logf("legitimate call failed: %v", err)
				errs.Add(1)
			}
		}
	}()
	return lat, errs, ch
}

// 2,000 idle connections and 200 that announce 4 MiB frames and stall, all
// from 127.0.0.2, while a caller on 127.0.0.1 keeps calling: the attackers
// must be closed within the timeouts, the heap must stay small, and every
// legitimate call must succeed (their latencies are logged).
func TestIdleAndStalledConnectionsUnderLoad(t *testing.T) {
	const idle, stalled = 2000, 200
	const timeout = 2 * time.Second
	ensureFiles(t, 2*(idle+stalled)+200)
	srv := startServer(t, netKinds[0], "", echoHandler, ServerOptions{
		IdleTimeout: timeout, FrameTimeout: timeout, MaxConnsPerIP: 2 * (idle + stalled),
	})
	c := newTestClient(t, netKinds[0], ClientOptions{})
	_, err := c.Call(context.Background(), srv.addr, &Request{})
	require.NoError(t, err)
	base := heapInuse()

	stop := make(chan struct{})
	lat, errs, callerDone := caller(t, c, srv.addr, stop)
	var a attacker
	a.open(t, srv.addr, idle, nil)
	stall := append(binary.BigEndian.AppendUint32(nil, DefaultMaxFrameSize), Version, KindRequest, 0x99)
	a.open(t, srv.addr, stalled, stall)
	testutil.Eventually(t, promptly, func() bool { return srv.Stats().Accepted >= idle+stalled+1 }, "all connections accepted")
	peak := heapInuse()
	t.Logf("heap in use: %d MB before, %d MB with %d attacking connections open", base>>20, peak>>20,
		idle+stalled-int(a.closed.Load()))
	require.Less(t, int64(peak)-int64(base), int64(50<<20), "heap growth")

	testutil.Eventually(t, timeout+2*promptly, func() bool { return a.closed.Load() == idle+stalled },
		"every attacking connection closed by the server")
	a.wg.Wait()
	close(stop)
	<-callerDone

	s := srv.Stats()
	require.GreaterOrEqual(t, s.ClosedIdle, uint64(idle))
	require.Equal(t, uint64(stalled), s.ClosedFrameTimeout)
	require.Less(t, a.slowest, timeout+promptly, "slowest close after dial")
	require.Zero(t, errs.Load(), "legitimate calls failed")
	slices.Sort(*lat)
	n := len(*lat)
	require.Greater(t, n, 100)
	t.Logf("%d legitimate calls: p50 %v, p99 %v, max %v; slowest attacker closed %v after dial",
		n, (*lat)[n/2], (*lat)[n*99/100], (*lat)[n-1], a.slowest)
}
