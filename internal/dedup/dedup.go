// Package dedup remembers the outcome of recent calls by message ID so that
// a retried call is answered from the first execution instead of running its
// handler twice.
package dedup

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/aegisipc/aegis/internal/clock"
)

// Cache maps message IDs to the outcome of their one execution. Entries
// expire after the window and the oldest are evicted beyond the bound. It is
// safe for concurrent use.
//
// Entries come and go in arrival order, so they sit in a ring of compact
// slots (the ID's hash, the arrival time, the entry) and the map is keyed by
// the ID's 64-bit hash. Evicting the oldest entry, which every call does
// once the cache is full, then reads only the ring and the map, never the
// long-cold entry or its ID. The bookkeeping per call is one allocation (the
// entry); the channel waiters block on is made only when a duplicate arrives
// while the first execution still runs.
type Cache[V any] struct {
	clk    clock.Clock
	epoch  time.Time // arrival times are kept as nanoseconds since epoch
	window time.Duration
	max    int
	seed   maphash.Seed

	mu      sync.Mutex // guards everything below and every entry's state
	m       map[uint64]*Entry[V]
	ring    []slot[V] // circular; ring[head] is the oldest of n slots
	head, n int
	onEvict func() // may be nil; called with mu held
}

// slot is one arrival: a listed entry, or one dropped since (Finish without
// keep), which is skipped when its turn to be evicted comes.
type slot[V any] struct {
	h  uint64
	at int64 // nanoseconds since the cache's epoch
	e  *Entry[V]
}

// Entry is one message ID's execution.
type Entry[V any] struct {
	c        *Cache[V]
	id       string
	h        uint64
	finished bool          // Finish was called
	done     chan struct{} // made on demand by Done; closed by Finish
	val      V
}

// closed is returned by Done for finished entries.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// New returns a cache keeping entries for window, at most max of them.
// onEvict, if not nil, is called (with the cache locked: it must be quick
// and must not use the cache) for every entry evicted by the window or the
// bound.
func New[V any](clk clock.Clock, window time.Duration, max int, onEvict func()) *Cache[V] {
	return &Cache[V]{clk: clk, epoch: clk.Now(), window: window, max: max, seed: maphash.MakeSeed(),
		m: make(map[uint64]*Entry[V]), onEvict: onEvict}
}

// Begin claims id. If this is the first time id is seen (or its earlier
// entry expired or was dropped), it returns a fresh entry and true: the
// caller must run the work and call Finish. Otherwise it returns the
// existing entry and false: the caller waits on Done, then reads Result.
func (c *Cache[V]) Begin(id string) (*Entry[V], bool) {
	h := maphash.String(c.seed, id)
	now := int64(c.clk.Now().Sub(c.epoch))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
	e := &Entry[V]{c: c, id: id, h: h}
	if old, ok := c.m[h]; ok {
		if old.id == id {
			return old, false
		}
		// Another ID with the same 64-bit hash (about one chance in 10^11
		// at 10,000 entries): run this one without remembering it.
		return e, true
	}
	if c.max <= 0 {
		return e, true
	}
	if c.n == c.max {
		c.evictHeadLocked()
	}
	c.pushLocked(slot[V]{h: h, at: now, e: e})
	c.m[h] = e
	return e, true
}

// Finish records the outcome of e. With keep false the entry is dropped (a
// later duplicate runs the work again); waiters still receive val.
func (c *Cache[V]) Finish(e *Entry[V], val V, keep bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.val, e.finished = val, true
	if !keep {
		if cur, ok := c.m[e.h]; ok && cur == e {
			delete(c.m, e.h) // its slot stays until its turn to be evicted
		}
	}
	if e.done != nil {
		close(e.done)
	}
}

// Done is closed when the entry's outcome is known.
func (e *Entry[V]) Done() <-chan struct{} {
	e.c.mu.Lock()
	defer e.c.mu.Unlock()
	if e.finished {
		return closed
	}
	if e.done == nil {
		e.done = make(chan struct{})
	}
	return e.done
}

// Result points at the outcome, which Finish set and nothing changes after;
// call it after Finish or once Done is closed.
func (e *Entry[V]) Result() *V { return &e.val }

// Len returns the number of entries held.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Expire drops entries older than the window now (Begin does it too).
func (c *Cache[V]) Expire() {
	now := int64(c.clk.Now().Sub(c.epoch))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
}

func (c *Cache[V]) expireLocked(now int64) {
	for c.n > 0 && now-c.ring[c.head].at > int64(c.window) {
		c.evictHeadLocked()
	}
}

// evictHeadLocked removes the oldest slot, and its entry from the map if the
// entry is still listed there.
func (c *Cache[V]) evictHeadLocked() {
	s := &c.ring[c.head]
	if cur, ok := c.m[s.h]; ok && cur == s.e {
		// An entry still running stays usable by its runner and waiters;
		// only later duplicates no longer find it.
		delete(c.m, s.h)
		if c.onEvict != nil {
			c.onEvict()
		}
	}
	*s = slot[V]{}
	c.head++
	if c.head == len(c.ring) {
		c.head = 0
	}
	c.n--
}

// pushLocked appends s as the newest slot, growing the ring (up to max) when
// it is full.
func (c *Cache[V]) pushLocked(s slot[V]) {
	if c.n == len(c.ring) {
		grown := make([]slot[V], min(max(2*len(c.ring), 64), c.max))
		k := copy(grown, c.ring[c.head:])
		copy(grown[k:], c.ring[:c.head])
		c.ring, c.head = grown, 0
	}
	i := c.head + c.n
	if i >= len(c.ring) {
		i -= len(c.ring)
	}
	c.ring[i] = s
	c.n++
}
