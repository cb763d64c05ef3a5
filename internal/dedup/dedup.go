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
// expire after the window, and the oldest are evicted beyond either bound:
// a number of entries and a number of bytes (as counted by the sizeOf
// function given to New, plus the ID). It is safe for concurrent use.
//
// Entries come and go in arrival order, so they sit in a ring of compact
// slots (the ID's hash, the arrival time, the entry), and an index maps the
// ID's 64-bit hash to the slot's arrival number. Evicting the oldest entry,
// which every call does once the cache is full, touches the ring only: the
// index keeps the evicted key (a key whose slot is gone is ignored) and is
// rebuilt from the ring once it holds twice the bound. So a call reads one
// cold part of memory (its ID's index bucket) where a map-only design reads
// three (that bucket, the oldest entry's bucket and the oldest entry's ID).
// The bookkeeping per call is one allocation (the entry); the channel
// waiters block on is made only when a duplicate arrives while the first
// execution still runs.
type Cache[V any] struct {
	clk    clock.Clock
	epoch  time.Time // arrival times are kept as nanoseconds since epoch
	window time.Duration
	max    int
	seed   maphash.Seed
	// maxBytes bounds bytes, the sum of the sizes of kept outcomes; sizeOf
	// measures one (nil: bytes are not counted).
	maxBytes int64
	sizeOf   func(V) int

	mu      sync.Mutex // guards everything below and every entry's state
	index   map[uint64]uint64
	spare   map[uint64]uint64 // the previous index, cleared and reused by the next rebuild
	ring    []slot[V]         // circular; ring[head] is the oldest of n slots
	head, n int
	headSeq uint64 // arrival number of ring[head]
	live    int    // slots neither dropped nor evicted
	bytes   int64
	onEvict func() // may be nil; called with mu held
}

// slot is one arrival: a listed entry, or one dropped since (Finish without
// keep), which is skipped when its turn to be evicted comes.
type slot[V any] struct {
	h       uint64
	at      int64 // nanoseconds since the cache's epoch
	e       *Entry[V]
	size    int64 // the kept outcome's bytes; 0 until Finish keeps it
	dropped bool
}

// Entry is one message ID's execution.
type Entry[V any] struct {
	c        *Cache[V]
	id       string
	h        uint64
	seq      uint64        // arrival number; 0 when not in the ring
	finished bool          // Finish was called
	done     chan struct{} // made on demand by Done; closed by Finish
	val      V
}

// closed is returned by Done for finished entries.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// EntryOverhead is what the byte bound counts for one kept entry besides
// its outcome's size and its ID: roughly the entry and its share of the
// ring and the map.
const EntryOverhead = 160

// New returns a cache keeping entries for window, at most max of them. If
// sizeOf is not nil, the entries kept also hold at most maxBytes bytes,
// each counting sizeOf(outcome) + len(id) + EntryOverhead; an outcome
// that does not fit on its own is not kept (as with Finish's keep false),
// rather than evicting every other. onEvict, if not nil, is called
// (with the cache locked: it must be quick and must not use the cache) for
// every entry evicted by the window or a bound.
func New[V any](clk clock.Clock, window time.Duration, max int, maxBytes int64, sizeOf func(V) int, onEvict func()) *Cache[V] {
	return &Cache[V]{clk: clk, epoch: clk.Now(), window: window, max: max, seed: maphash.MakeSeed(),
		maxBytes: maxBytes, sizeOf: sizeOf, index: make(map[uint64]uint64), onEvict: onEvict, headSeq: 1}
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
	if seq, ok := c.index[h]; ok {
		if s := c.slotAt(seq); s != nil && !s.dropped && s.h == h {
			if s.e.id == id {
				return s.e, false
			}
			// Another ID with the same 64-bit hash (about one chance in
			// 10^11 at 10,000 entries): run it without remembering it.
			return e, true
		}
	}
	if c.max <= 0 {
		return e, true
	}
	if c.n == c.max {
		c.evictHeadLocked()
	}
	e.seq = c.headSeq + uint64(c.n)
	c.pushLocked(slot[V]{h: h, at: now, e: e})
	c.live++
	c.index[h] = e.seq
	if len(c.index) >= 2*c.max+64 {
		c.rebuildIndexLocked()
	}
	return e, true
}

// Finish records the outcome of e. With keep false the entry is dropped (a
// later duplicate runs the work again); waiters still receive val.
func (c *Cache[V]) Finish(e *Entry[V], val V, keep bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.val, e.finished = val, true
	if s := c.slotAt(e.seq); s != nil && s.e == e && !s.dropped {
		var size int64
		if keep && c.sizeOf != nil {
			size = int64(c.sizeOf(val)) + int64(len(e.id)) + EntryOverhead
		}
		switch {
		case !keep || size > c.maxBytes:
			// The slot stays until its turn to be evicted.
			s.dropped, s.e = true, nil
			c.live--
			if seq, ok := c.index[e.h]; ok && seq == e.seq {
				delete(c.index, e.h)
			}
		case size > 0:
			s.size = size
			c.bytes += size
			for c.bytes > c.maxBytes && c.n > 0 {
				c.evictHeadLocked()
			}
		}
	}
	if e.done != nil {
		close(e.done)
	}
}

// slotAt returns the slot of arrival number seq, or nil if it has left the
// ring.
func (c *Cache[V]) slotAt(seq uint64) *slot[V] {
	if seq < c.headSeq || seq-c.headSeq >= uint64(c.n) {
		return nil
	}
	i := c.head + int(seq-c.headSeq)
	if i >= len(c.ring) {
		i -= len(c.ring)
	}
	return &c.ring[i]
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
	return c.live
}

// Bytes returns the bytes counted for the entries held.
func (c *Cache[V]) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
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

// evictHeadLocked removes the oldest slot. An entry still running stays
// usable by its runner and waiters; only later duplicates no longer find
// it. Its index key stays behind, ignored, until the index is rebuilt.
func (c *Cache[V]) evictHeadLocked() {
	s := &c.ring[c.head]
	if !s.dropped {
		c.live--
		if c.onEvict != nil {
			c.onEvict()
		}
	}
	c.bytes -= s.size
	*s = slot[V]{}
	c.headSeq++
	c.head++
	if c.head == len(c.ring) {
		c.head = 0
	}
	c.n--
}

// rebuildIndexLocked replaces the index with one holding only the keys of
// live slots. A live slot's hash is unique among live slots: an ID is
// added only when no live slot has its hash.
func (c *Cache[V]) rebuildIndexLocked() {
	idx := c.spare
	if idx == nil {
		idx = make(map[uint64]uint64, c.live)
	}
	clear(idx)
	for k := 0; k < c.n; k++ {
		seq := c.headSeq + uint64(k)
		if s := c.slotAt(seq); !s.dropped {
			idx[s.h] = seq
		}
	}
	c.index, c.spare = idx, c.index
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
