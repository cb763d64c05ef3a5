// This file holds passive ejection: instances that keep failing this
// node's calls leave its routing pool for a while.

package aegis

import "time"

// eject removes an instance from this node's routing pool for a period that
// doubles with each consecutive ejection (base, 2×base, ... up to max).
// Only the entry whose calls failed is ejected (its load is l): a call
// that failed at an instance's old address says nothing of the record that
// replaced it.
func (r *registry) eject(k instKey, l *instLoad, base, maxTime time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok || e.load != l || !e.ejectedUntil.IsZero() {
		return
	}
	now := r.clk.Now()
	d := base << min(e.ejections, 16)
	if d > maxTime || d <= 0 {
		d = maxTime
	}
	e.ejections++
	e.load.ejections.Store(int32(e.ejections))
	e.load.consecFails.Store(0)
	e.ejectedAt, e.ejectedUntil = now, now.Add(d)
	e.load.ejected.Store(true)
	r.snaps.markStale(k.service)
	r.emit(Event{Type: EventEjected, Instance: e.instance(), OldStatus: e.status, NewStatus: e.status,
		Reason: "consecutive-failures", Time: now})
}

// callSucceeded clears the failure history of an instance after a call it
// answered.
func (r *registry) callSucceeded(k instKey, l *instLoad) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.entries[k]; ok && e.load == l && e.ejectedUntil.IsZero() {
		e.ejections = 0
		e.load.ejections.Store(0)
	}
}

// reinstateLocked returns ejected instances to the pool once their period
// has passed and a heartbeat newer than the ejection has arrived (or at
// once, for instances that send no heartbeats). The next call decides: a
// success clears the history, a failure ejects again for twice as long.
func (r *registry) reinstateLocked(e *entry, now time.Time) {
	if e.ejectedUntil.IsZero() || now.Before(e.ejectedUntil) {
		return
	}
	if e.rec.Heartbeats && !e.lastHeartbeat.After(e.ejectedAt) {
		return
	}
	e.ejectedUntil = time.Time{}
	e.load.ejected.Store(false)
	e.load.consecFails.Store(int32(r.ejectAfter - 1))
	r.snaps.markStale(e.rec.Service)
	r.emit(Event{Type: EventReinstated, Instance: e.instance(), OldStatus: e.status, NewStatus: e.status,
		Reason: "ejection-expired", Time: now})
}

// ejected reports whether this node has ejected the instance whose load l
// is (nil: no).
func ejected(l *instLoad) bool {
	return l != nil && l.ejected.Load()
}

// ReportResult feeds this node's passive failure tracking with the outcome
// of a call made to instance (service, id) outside Aegis, by a client that
// discovers instances through Aegis but calls them with its own protocol
// (Service.Endpoints). ok=false means the instance did not answer
// (connection refused or reset, timeout, 502/503/504): EjectAfterFailures
// such reports in a row eject it from this node's routing
// (HealthyInstances, EventEjected) for a while. ok=true means it answered,
// which clears the count. Reports for unknown instances are ignored.
//
// It costs a map lookup under the registry's read lock (no copy of the
// instance), so a client may report every call.
func (n *Node) ReportResult(service, id string, ok bool) {
	l := n.reg.loadOf(instKey{service, id})
	if l == nil {
		return
	}
	inst := Instance{Service: service, ID: id, load: l}
	if ok {
		n.caller.observe(&inst, outcomeOK)
	} else {
		n.caller.observe(&inst, outcomeUnavailable)
	}
}

// loadOf returns the live call bookkeeping of instance k, nil when k is
// unknown.
func (r *registry) loadOf(k instKey) *instLoad {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e, ok := r.entries[k]; ok {
		return e.load
	}
	return nil
}
