// Package dedup remembers the outcome of recent calls by message ID so that
// a retried call is answered from the first execution instead of running its
// handler twice.
package dedup

import (
	"container/list"
	"sync"
	"time"

	"github.com/aegisipc/aegis/internal/clock"
)

// Cache maps message IDs to the outcome of their one execution. Entries
// expire after the window and the oldest are evicted beyond the bound. It is
// safe for concurrent use.
type Cache[V any] struct {
	clk    clock.Clock
	window time.Duration
	max    int

	mu        sync.Mutex // guards m, order, evictions
	m         map[string]*Entry[V]
	order     *list.List // of *Entry[V], oldest first
	evictions uint64
}

// Entry is one message ID's execution. Done is closed once the outcome is
// known.
type Entry[V any] struct {
	id     string
	at     time.Time
	elem   *list.Element
	done   chan struct{}
	val    V
	cached bool
}

// New returns a cache keeping entries for window, at most max of them.
func New[V any](clk clock.Clock, window time.Duration, max int) *Cache[V] {
	return &Cache[V]{clk: clk, window: window, max: max, m: make(map[string]*Entry[V]), order: list.New()}
}

// Begin claims id. If this is the first time id is seen (or its earlier
// entry expired or was dropped), it returns a fresh entry and true: the
// caller must run the work and call Finish. Otherwise it returns the
// existing entry and false: the caller waits on Wait.
func (c *Cache[V]) Begin(id string) (*Entry[V], bool) {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
	if e, ok := c.m[id]; ok {
		return e, false
	}
	e := &Entry[V]{id: id, at: now, done: make(chan struct{})}
	e.elem = c.order.PushBack(e)
	c.m[id] = e
	for c.order.Len() > c.max {
		c.removeLocked(c.order.Front().Value.(*Entry[V]))
		c.evictions++
	}
	return e, true
}

// Finish records the outcome of e. With keep false the entry is dropped (a
// later duplicate runs the work again); waiters still receive val.
func (c *Cache[V]) Finish(e *Entry[V], val V, keep bool) {
	c.mu.Lock()
	e.val, e.cached = val, keep
	if !keep && c.m[e.id] == e {
		c.removeLocked(e)
	}
	c.mu.Unlock()
	close(e.done)
}

// Done is closed when the entry's outcome is known.
func (e *Entry[V]) Done() <-chan struct{} { return e.done }

// Value returns the outcome; call it after Done is closed.
func (e *Entry[V]) Value() V { return e.val }

// Len returns the number of entries held.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// Evictions returns how many entries were evicted by the size bound or the
// window since the cache was made.
func (c *Cache[V]) Evictions() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.evictions
}

// Expire drops entries older than the window now (Begin does it too).
func (c *Cache[V]) Expire() {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
}

func (c *Cache[V]) expireLocked(now time.Time) {
	for f := c.order.Front(); f != nil; f = c.order.Front() {
		e := f.Value.(*Entry[V])
		if now.Sub(e.at) <= c.window {
			return
		}
		c.removeLocked(e)
		c.evictions++
	}
}

func (c *Cache[V]) removeLocked(e *Entry[V]) {
	if e.elem != nil {
		c.order.Remove(e.elem)
		e.elem = nil
	}
	if c.m[e.id] == e {
		delete(c.m, e.id)
	}
}
