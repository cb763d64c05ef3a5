// Package dedup remembers the outcome of recent calls by message ID so that
// a retried call is answered from the first execution instead of running its
// handler twice.
package dedup

import (
	"sync"
	"time"

	"github.com/aegisipc/aegis/internal/clock"
)

// Cache maps message IDs to the outcome of their one execution. Entries
// expire after the window and the oldest are evicted beyond the bound. It is
// safe for concurrent use.
//
// The bookkeeping per call is one allocation (the entry, which is also its
// own list node) plus the map slot; the channel waiters block on is made
// only when a duplicate arrives while the first execution still runs.
type Cache[V any] struct {
	clk    clock.Clock
	window time.Duration
	max    int

	mu         sync.Mutex // guards everything below and every entry's links and state
	m          map[string]*Entry[V]
	head, tail *Entry[V] // oldest first
	n          int
	onEvict    func() // may be nil; called with mu held
}

// Entry is one message ID's execution.
type Entry[V any] struct {
	c          *Cache[V]
	id         string
	at         time.Time
	prev, next *Entry[V]
	listed     bool
	finished   bool
	done       chan struct{} // made on demand by Done; closed by Finish
	val        V
}

// closed is returned by Done for finished entries.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// New returns a cache keeping entries for window, at most max of them.
// onEvict, if not nil, is called (with the cache locked: it must be quick
// and must not use the cache) for every entry evicted by the window or the
// bound.
func New[V any](clk clock.Clock, window time.Duration, max int, onEvict func()) *Cache[V] {
	return &Cache[V]{clk: clk, window: window, max: max, m: make(map[string]*Entry[V]), onEvict: onEvict}
}

// Begin claims id. If this is the first time id is seen (or its earlier
// entry expired or was dropped), it returns a fresh entry and true: the
// caller must run the work and call Finish. Otherwise it returns the
// existing entry and false: the caller waits on Done, then reads Result.
func (c *Cache[V]) Begin(id string) (*Entry[V], bool) {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
	if e, ok := c.m[id]; ok {
		return e, false
	}
	e := &Entry[V]{c: c, id: id, at: now}
	c.pushLocked(e)
	c.m[id] = e
	for c.n > c.max {
		c.removeLocked(c.head)
		c.evicted()
	}
	return e, true
}

// Finish records the outcome of e. With keep false the entry is dropped (a
// later duplicate runs the work again); waiters still receive val.
func (c *Cache[V]) Finish(e *Entry[V], val V, keep bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.val, e.finished = val, true
	if !keep {
		c.removeLocked(e)
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
	return c.n
}

// Expire drops entries older than the window now (Begin does it too).
func (c *Cache[V]) Expire() {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
}

func (c *Cache[V]) expireLocked(now time.Time) {
	for c.head != nil && now.Sub(c.head.at) > c.window {
		c.removeLocked(c.head)
		c.evicted()
	}
}

func (c *Cache[V]) evicted() {
	if c.onEvict != nil {
		c.onEvict()
	}
}

func (c *Cache[V]) pushLocked(e *Entry[V]) {
	e.prev, e.next, e.listed = c.tail, nil, true
	if c.tail != nil {
		c.tail.next = e
	} else {
		c.head = e
	}
	c.tail = e
	c.n++
}

// removeLocked unlinks e and forgets its ID. An entry still running stays
// usable by its runner and waiters; only later duplicates no longer find it.
func (c *Cache[V]) removeLocked(e *Entry[V]) {
	if !e.listed {
		return
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		c.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		c.tail = e.prev
	}
	e.prev, e.next, e.listed = nil, nil, false
	c.n--
	if c.m[e.id] == e {
		delete(c.m, e.id)
	}
}
