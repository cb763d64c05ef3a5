// This file holds inbox, which delivers packets to a MemTransport's PacketCh
// once their latency has passed, without ever blocking the sender.

package transport

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// inbox queues packets in flight to one transport. Packets without latency go
// straight to the channel when nothing is queued ahead of them; the rest
// wait in a FIFO queue drained by run.
type inbox struct {
	out     chan<- *memberlist.Packet
	dropped *atomic.Uint64

	mu      sync.Mutex
	queue   []inflight
	lastDue time.Time
	wake    chan struct{} // capacity 1: the queue became non-empty
}

// inflight is a packet waiting for its delivery time.
type inflight struct {
	p   *memberlist.Packet
	due time.Time
}

func (ib *inbox) init(out chan<- *memberlist.Packet, dropped *atomic.Uint64) {
	ib.out = out
	ib.dropped = dropped
	ib.wake = make(chan struct{}, 1)
}

// push delivers p at due, or drops it if too many packets are waiting. It
// never blocks. Due times are kept non-decreasing so packets are delivered
// in send order even when the latency shrinks.
func (ib *inbox) push(p *memberlist.Packet, due time.Time) {
	ib.mu.Lock()
	defer ib.mu.Unlock()
	if len(ib.queue) == 0 && !time.Now().Before(due) {
		ib.deliverLocked(p)
		return
	}
	if len(ib.queue) >= PacketBuffer {
		ib.dropped.Add(1)
		return
	}
	if due.Before(ib.lastDue) {
		due = ib.lastDue
	}
	ib.lastDue = due
	ib.queue = append(ib.queue, inflight{p, due})
	if len(ib.queue) == 1 {
		select {
		case ib.wake <- struct{}{}:
		default:
		}
	}
}

// deliverLocked stamps p and hands it to the reader, or drops it if the
// channel is full. ib.mu is held, which keeps delivery in order.
func (ib *inbox) deliverLocked(p *memberlist.Packet) {
	p.Timestamp = time.Now()
	select {
	case ib.out <- p:
	default:
		ib.dropped.Add(1)
	}
}

// run delivers queued packets as they fall due, until done is closed.
func (ib *inbox) run(done <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		ib.mu.Lock()
		wait := time.Duration(-1)
		for len(ib.queue) > 0 {
			head := ib.queue[0]
			if d := time.Until(head.due); d > 0 {
				wait = d
				break
			}
			ib.queue[0] = inflight{}
			ib.queue = ib.queue[1:]
			ib.deliverLocked(head.p)
		}
		if len(ib.queue) == 0 {
			ib.queue = nil // let the backing array go
		}
		ib.mu.Unlock()

		if wait >= 0 {
			timer.Reset(wait)
		}
		select {
		case <-done:
			return
		case <-ib.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}
