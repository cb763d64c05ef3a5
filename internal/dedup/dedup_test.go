package dedup

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/aegisipc/aegis/internal/clock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFirstRunsOthersWait(t *testing.T) {
	c := New[string](clock.NewFake(time.Unix(0, 0)), time.Minute, 10, 0, nil, nil)
	e, first := c.Begin("m1")
	require.True(t, first)
	dup, first := c.Begin("m1")
	require.False(t, first)
	require.Same(t, e, dup)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-dup.Done()
		require.Equal(t, "result", *dup.Result())
	}()
	c.Finish(e, "result", true)
	wg.Wait()
	again, first := c.Begin("m1")
	require.False(t, first)
	<-again.Done()
	require.Equal(t, "result", *again.Result())
}

func TestNotKeptRunsAgain(t *testing.T) {
	c := New[string](clock.NewFake(time.Unix(0, 0)), time.Minute, 10, 0, nil, nil)
	e, _ := c.Begin("m1")
	c.Finish(e, "retryable failure", false)
	_, first := c.Begin("m1")
	require.True(t, first)
}

func TestWindowAndBound(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	var evicted int
	c := New[int](clk, 300*time.Second, 3, 0, nil, func() { evicted++ })
	for i := 0; i < 5; i++ {
		e, first := c.Begin(fmt.Sprint(i))
		require.True(t, first)
		c.Finish(e, i, true)
	}
	require.Equal(t, 3, c.Len(), "bound holds")
	require.EqualValues(t, 2, evicted)
	_, first := c.Begin("0")
	require.True(t, first, "oldest evicted first")
	_, first = c.Begin("4")
	require.False(t, first, "newest kept")

	clk.Advance(299 * time.Second)
	c.Expire()
	require.Equal(t, 3, c.Len(), "inside the window")
	clk.Advance(2 * time.Second)
	c.Expire()
	require.Equal(t, 0, c.Len(), "window passed")
	require.EqualValues(t, 6, evicted, "2 by the bound, 1 more by Begin(\"0\"), 3 by the window")
	_, first = c.Begin("4")
	require.True(t, first)
}

// A dropped entry's slot, evicted later, does not take the ID's newer entry
// with it; nor does dropping an entry that was evicted while it ran.
func TestDroppedAndEvictedEntriesLeaveNewerOnes(t *testing.T) {
	var evicted int
	c := New[string](clock.NewFake(time.Unix(0, 0)), time.Minute, 3, 0, nil, func() { evicted++ })
	e, _ := c.Begin("m1")
	c.Finish(e, "retryable failure", false)
	again, first := c.Begin("m1")
	require.True(t, first)
	c.Finish(again, "ok", true)
	for _, id := range []string{"a", "b"} { // the second evicts the dropped slot
		x, _ := c.Begin(id)
		c.Finish(x, id, true)
	}
	require.Zero(t, evicted, "a dropped slot is not an eviction")
	dup, first := c.Begin("m1")
	require.False(t, first)
	require.Equal(t, "ok", *dup.Result())

	// "slow" runs while three newer IDs push it out; it comes back as a
	// new entry, and the first run's late, not-kept outcome leaves that
	// alone.
	slow, _ := c.Begin("slow")
	for _, id := range []string{"c", "d", "e"} {
		x, _ := c.Begin(id)
		c.Finish(x, id, true)
	}
	slow2, first := c.Begin("slow")
	require.True(t, first)
	c.Finish(slow, "late failure", false)
	c.Finish(slow2, "done", true)
	dup, first = c.Begin("slow")
	require.False(t, first)
	require.Equal(t, "done", *dup.Result())
	require.Equal(t, 3, c.Len())
}

// The byte bound evicts the oldest entries once the kept outcomes (plus IDs
// and overhead) exceed it, and an outcome too big on its own is not kept.
func TestByteBound(t *testing.T) {
	var evicted int
	per := int64(100 + 2 + EntryOverhead) // 100-byte outcome, 2-byte ID
	c := New[[]byte](clock.NewFake(time.Unix(0, 0)), time.Minute, 100, 3*per, func(b []byte) int { return len(b) }, func() { evicted++ })
	for i := 0; i < 5; i++ {
		e, first := c.Begin(fmt.Sprintf("m%d", i))
		require.True(t, first)
		c.Finish(e, make([]byte, 100), true)
	}
	require.Equal(t, 3, c.Len())
	require.Equal(t, 3*per, c.Bytes())
	require.Equal(t, 2, evicted)
	_, first := c.Begin("m0")
	require.True(t, first, "oldest evicted first")
	_, first = c.Begin("m4")
	require.False(t, first, "newest kept")

	// A running entry ("m0" again) counts nothing. An outcome over the
	// bound on its own is not kept, and evicts nothing.
	big, _ := c.Begin("mb")
	c.Finish(big, make([]byte, 4*per), true)
	require.Equal(t, 3*per, c.Bytes())
	require.Equal(t, 4, c.Len(), "m2, m3, m4 and the running m0")
	_, first = c.Begin("mb")
	require.True(t, first, "an outcome over the bound is not kept")
	require.Equal(t, 2, evicted)
}

// Long runs go through many rebuilds of the index (every ~2×bound+64
// arrivals): the newest entries are always found, older and dropped ones
// never, and the index stays bounded.
func TestIndexRebuilds(t *testing.T) {
	const bound = 10
	c := New[int](clock.NewFake(time.Unix(0, 0)), time.Hour, bound, 0, nil, nil)
	for i := 0; i < 5000; i++ {
		e, first := c.Begin(fmt.Sprint(i))
		require.True(t, first, "id %d", i)
		c.Finish(e, i, i%7 != 0) // every 7th is dropped
		if i%97 == 0 && i >= bound {
			// The newest kept ones are found (this adds nothing)...
			for j := i - bound + 1; j <= i; j++ {
				if j%7 == 0 {
					continue
				}
				dup, first := c.Begin(fmt.Sprint(j))
				require.False(t, first, "id %d after %d", j, i)
				require.Equal(t, j, *dup.Result())
			}
			// ...the one just pushed out is not, nor a dropped one.
			for _, j := range []int{i - bound, i - i%7} {
				e, first := c.Begin(fmt.Sprint(j))
				require.True(t, first, "id %d after %d", j, i)
				c.Finish(e, j, false)
			}
		}
		require.LessOrEqual(t, len(c.index), 2*bound+64)
	}
}

// TestMemoryPerEntry reports the heap cost of one entry at the default
// bound (10,000) holding a 64-byte result.
func TestMemoryPerEntry(t *testing.T) {
	const n = 10000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := New[[]byte](clock.Real{}, 300*time.Second, n, 0, nil, nil)
	for i := 0; i < n; i++ {
		e, _ := c.Begin(fmt.Sprintf("node-a1b2c3d4-%x", i))
		c.Finish(e, make([]byte, 64), true)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("memory per dedup entry (22-byte ID, 64-byte result): %.0f bytes", per)
	require.Equal(t, n, c.Len())
	require.Less(t, per, 2048.0)
	runtime.KeepAlive(c)
}

// BenchmarkBeginFinish measures one call's bookkeeping in a full cache (the
// default bound of 10,000 entries), where every Begin also evicts the
// oldest entry.
func BenchmarkBeginFinish(b *testing.B) {
	c := New[[]byte](clock.Real{}, time.Hour, 10000, 1<<30, func(b []byte) int { return len(b) }, nil)
	ids := make([]string, 1<<16)
	for i := range ids {
		ids[i] = fmt.Sprintf("node-a-1f2e3d4c-%x", i)
	}
	val := make([]byte, 64)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		e, _ := c.Begin(ids[i&(1<<16-1)])
		c.Finish(e, val, true)
	}
}
