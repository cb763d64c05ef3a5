// Package bqueue is a transmit-limited broadcast queue for gossip.
//
// It plays the role of memberlist.TransmitLimitedQueue, which Aegis used
// first and stopped using: in memberlist v0.7.0 that queue resets its id
// generator whenever its tree is momentarily empty (while GetBroadcasts holds
// items out for re-insertion, or while QueueBroadcast replaces the only
// item), after which a new message of the same length and transmit count can
// get an id already in use and silently replace another message in the tree.
// Heartbeat batches from different nodes very often have the same length, so
// heartbeats were lost without a trace.
//
// Queue keys every message by name only; a message is sent at most
// mult·ceil(log10(n+1)) times, where n is the cluster size, fewest
// transmissions first and, among those, newest first.
package bqueue

import (
	"math"
	"slices"
	"sync"
)

// Queue is safe for concurrent use.
type Queue struct {
	mult     int
	numNodes func() int
	maxMsg   int // largest message queued; 0: no bound
	maxItems int // most messages queued; 0: no bound

	mu    sync.Mutex
	items map[string]*item
	seq   uint64
	buf   []*item // scratch for GetBroadcasts, guarded by mu
}

type item struct {
	name      string
	msg       []byte
	transmits int
	seq       uint64
}

// New returns a queue that sends each message mult·ceil(log10(n+1)) times,
// n being numNodes() at the time of sending.
func New(mult int, numNodes func() int) *Queue {
	return &Queue{mult: mult, numNodes: numNodes, items: make(map[string]*item)}
}

// Bound makes Queue refuse messages over maxMsg bytes (a message that never
// fits a packet would never leave the queue) and new names once maxItems
// messages are queued. Zero leaves a bound off. Call it before use.
func (q *Queue) Bound(maxMsg, maxItems int) {
	q.maxMsg, q.maxItems = maxMsg, maxItems
}

// Limit is the number of times a message is sent in a cluster of n nodes.
func Limit(mult, n int) int {
	return mult * int(math.Ceil(math.Log10(float64(n+1))))
}

// Queue adds msg under name, replacing a message of the same name that is
// still queued. The queue keeps msg; the caller must not modify it. It
// reports false, queueing nothing, when msg breaks a bound set by Bound.
func (q *Queue) Queue(name string, msg []byte) bool {
	if q.maxMsg > 0 && len(msg) > q.maxMsg {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, replace := q.items[name]; !replace && q.maxItems > 0 && len(q.items) >= q.maxItems {
		return false
	}
	q.seq++
	q.items[name] = &item{name: name, msg: msg, seq: q.seq}
	return true
}

// Len returns the number of queued messages.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// GetBroadcasts returns queued messages whose sizes plus overhead each fit
// in limit bytes in total, counting one transmission for each. Messages that
// reached their transmit limit leave the queue.
func (q *Queue) GetBroadcasts(overhead, limit int) [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return nil
	}
	max := max(Limit(q.mult, q.numNodes()), 1)
	q.buf = q.buf[:0]
	for _, it := range q.items {
		q.buf = append(q.buf, it)
	}
	slices.SortFunc(q.buf, func(a, b *item) int {
		if a.transmits != b.transmits {
			return a.transmits - b.transmits
		}
		switch {
		case a.seq > b.seq:
			return -1
		case a.seq < b.seq:
			return 1
		}
		return 0
	})
	var out [][]byte
	used := 0
	for _, it := range q.buf {
		if limit-used-overhead < len(it.msg) {
			continue // a smaller one may still fit
		}
		used += overhead + len(it.msg)
		out = append(out, it.msg)
		it.transmits++
		if it.transmits >= max {
			delete(q.items, it.name)
		}
	}
	clear(q.buf)
	return out
}
