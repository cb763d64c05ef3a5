// This file holds events: Event, Subscribe and the bus that fans events out
// to subscribers without blocking gossip.

package aegis

import (
	"fmt"
	"sync"
	"time"
)

// EventType says what happened to an instance.
//
// Every event carries the instance as this node sees it after the change.
// OldStatus and NewStatus differ only for EventStatusChanged; for the
// other types both are the instance's status at the event:
//
//	type            status pair                    reasons
//	registered      status it starts with          "registered"; "node-failed" when its node is already
//	                                               known dead (it starts unhealthy)
//	deregistered    its last status                "deregistered", "left" (its node left gracefully; on
//	                                               every node), "reaped" (unhealthy longer than
//	                                               ReapTimeout), "replaced" (a newer registration of
//	                                               the same ID took its place)
//	status-changed  old → new                      "heartbeat-timeout", "node-failed", "recovered" (a
//	                                               fresh heartbeat or its node back), "self-reported"
//	                                               (SetStatus, draining before Deregister or Leave)
//	ejected         unchanged                      "consecutive-failures" (this node's routing only)
//	reinstated      unchanged                      "ejection-expired"
//	role-changed    unchanged                      on the instance's own node: "promoted", "conflict",
//	                                               "superseded", "fenced" (see RoleChange);
//	                                               on other nodes: "promoted" or "demoted"
//	                                               (Instance.Role and Instance.Epoch are the new ones)
type EventType int

// Event types.
const (
	// EventRegistered: this node learned of a new instance (or registered
	// one).
	EventRegistered EventType = iota + 1
	// EventDeregistered: the instance is gone. Reasons: "deregistered",
	// "left" (its node left gracefully), "reaped" (unhealthy longer than
	// ReapTimeout), "replaced" (re-registered with a newer incarnation).
	EventDeregistered
	// EventStatusChanged: the instance's status changed. Reasons:
	// "heartbeat-timeout", "node-failed", "recovered", "self-reported".
	EventStatusChanged
	// EventRoleChanged: the instance's role in its role group changed
	// (Service.Role): a standby was promoted, or an active demoted. On the
	// instance's own node the reason says why ("promoted", "conflict",
	// "superseded", "fenced"); other nodes learn the role from its
	// heartbeats and say "promoted" or "demoted".
	EventRoleChanged
	// EventEjected: passive failure tracking took the instance out of this
	// node's routing pool for a while (reason "consecutive-failures"). Only
	// this node's routing is affected; other nodes judge for themselves.
	EventEjected
	// EventReinstated: the ejection period passed and a fresh heartbeat
	// arrived; the instance is back in this node's pool (reason
	// "ejection-expired").
	EventReinstated
)

// String returns a lower-case name such as "registered".
func (t EventType) String() string {
	switch t {
	case EventRegistered:
		return "registered"
	case EventDeregistered:
		return "deregistered"
	case EventStatusChanged:
		return "status-changed"
	case EventRoleChanged:
		return "role-changed"
	case EventEjected:
		return "ejected"
	case EventReinstated:
		return "reinstated"
	}
	return fmt.Sprintf("event(%d)", int(t))
}

// Event is a change in this node's view of an instance.
type Event struct {
	Type      EventType
	Instance  Instance
	OldStatus Status
	NewStatus Status
	Reason    string
	Time      time.Time
}

// Subscribe calls fn for every Event from now on, in order, from a goroutine
// of its own: fn never blocks gossip or other subscribers, and a slow fn only
// lets its own backlog grow. cancel stops delivery (events not yet delivered
// are dropped) and waits for a running fn to return; it must not be called
// from fn. Shutdown cancels every subscription.
func (n *Node) Subscribe(fn func(Event)) (cancel func()) {
	return n.bus.subscribe(fn)
}

// eventBus fans events out to subscribers, each with an unbounded queue and a
// goroutine of its own.
type eventBus struct {
	mu     sync.Mutex // guards subs and closed
	subs   map[*subscriber]struct{}
	closed bool
}

type subscriber struct {
	fn     func(Event)
	mu     sync.Mutex // guards queue and stop
	queue  []Event
	stop   bool
	wake   chan struct{} // capacity 1
	doneCh chan struct{}
}

func newEventBus() *eventBus {
	return &eventBus{subs: make(map[*subscriber]struct{})}
}

func (b *eventBus) subscribe(fn func(Event)) func() {
	s := &subscriber{fn: fn, wake: make(chan struct{}, 1), doneCh: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		close(s.doneCh)
		return func() {}
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	go s.run()
	return func() {
		b.mu.Lock()
		delete(b.subs, s)
		b.mu.Unlock()
		s.close()
	}
}

// publish queues ev for every subscriber; it never blocks.
func (b *eventBus) publish(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		s.mu.Lock()
		if !s.stop {
			s.queue = append(s.queue, ev)
		}
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// close cancels every subscription and waits for their goroutines.
func (b *eventBus) close() {
	b.mu.Lock()
	b.closed = true
	subs := b.subs
	b.subs = map[*subscriber]struct{}{}
	b.mu.Unlock()
	for s := range subs {
		s.close()
	}
}

func (s *subscriber) close() {
	s.mu.Lock()
	s.stop = true
	s.queue = nil
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.doneCh
}

func (s *subscriber) run() {
	defer close(s.doneCh)
	for range s.wake {
		for {
			s.mu.Lock()
			if s.stop {
				s.mu.Unlock()
				return
			}
			if len(s.queue) == 0 {
				s.mu.Unlock()
				break
			}
			batch := s.queue
			s.queue = nil
			s.mu.Unlock()
			for _, ev := range batch {
				s.fn(ev)
				s.mu.Lock()
				stop := s.stop
				s.mu.Unlock()
				if stop {
					return
				}
			}
		}
	}
}
