package aegis

import (
	"math/rand/v2"
	"time"

	"github.com/aegisipc/aegis/internal/wire"
)

// heartbeatLoop sends a heartbeat for every local instance each
// HeartbeatInterval.
func (n *Node) heartbeatLoop() {
	if !n.cfg.HeartbeatEnabled {
		return
	}
	t := n.clk.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stopCh:
			return
		case <-t.C():
		}
		n.mu.Lock()
		regs := make([]*Registration, 0, len(n.local))
		for _, r := range n.local {
			regs = append(regs, r)
		}
		n.mu.Unlock()
		for _, r := range regs {
			n.sendHeartbeat(r)
		}
	}
}

// sendHeartbeat advances r's sequence number, applies the heartbeat locally
// and gossips it.
func (n *Node) sendHeartbeat(r *Registration) {
	if !n.cfg.HeartbeatEnabled || r.paused.Load() {
		return
	}
	r.hbMu.Lock()
	defer r.hbMu.Unlock()
	if r.done.Load() {
		return
	}
	hb, ok := n.reg.localHeartbeat(r.key, Status(r.status.Load()))
	if !ok {
		return
	}
	msg, err := wire.Encode([]wire.Heartbeat{hb})
	if err != nil {
		n.log.Error("encode heartbeat", "err", err)
		return
	}
	n.broadcast("h:"+r.key.String(), msg)
	n.stats.heartbeatsSent.Add(1)
	n.met.heartbeatsSent.Add(bg, 1)
}

// localHeartbeat makes the next heartbeat of a local instance and applies it
// to the local view.
func (r *registry) localHeartbeat(k instKey, status Status) (wire.Heartbeat, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok || e.rec.Node != r.self {
		return wire.Heartbeat{}, false
	}
	now := r.clk.Now()
	e.rec.Seq++
	e.rec.Status = uint8(status)
	e.rec.Time = now.UnixNano()
	r.heartbeatLocked(e, now)
	return wire.Heartbeat{Service: k.service, ID: k.id, Incarnation: e.rec.Incarnation,
		Seq: e.rec.Seq, Status: e.rec.Status, Time: e.rec.Time}, true
}

// heartbeat applies a received heartbeat. It reports whether it was new
// (worth re-broadcasting) and whether the instance was unknown.
func (r *registry) heartbeat(hb *wire.Heartbeat) (fresh, unknown bool) {
	k := instKey{hb.Service, hb.ID}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok || hb.Incarnation > e.rec.Incarnation {
		// We lack the record (its broadcast has not reached us yet);
		// push/pull will bring it. Still pass the heartbeat on.
		t, tombed := r.tombs[k]
		return !tombed || wire.Newer(hb.Incarnation, hb.Seq, t.rec.Incarnation, t.rec.Seq), true
	}
	if hb.Incarnation < e.rec.Incarnation || hb.Seq <= e.rec.Seq {
		return false, false
	}
	e.rec.Seq = hb.Seq
	e.rec.Status = hb.Status
	e.rec.Time = hb.Time
	r.heartbeatLocked(e, r.clk.Now())
	return true, false
}

// check applies the absolute heartbeat timeout, reaps long-dead instances
// and forgets old tombstones.
func (r *registry) check() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	for k, e := range r.entries {
		if e.rec.Heartbeats && !e.timedOut && now.Sub(e.lastHeartbeat) > r.timeout {
			e.timedOut = true
			r.setStatusLocked(e, "heartbeat-timeout", now)
		}
		if (e.timedOut || e.nodeFailed) && !e.badSince.IsZero() && now.Sub(e.badSince) > r.reap {
			delete(r.entries, k)
			r.tombs[k] = tombstone{rec: wire.Record{Service: k.service, ID: k.id, Node: e.rec.Node,
				Incarnation: e.rec.Incarnation, Seq: e.rec.Seq, Deleted: true}, at: now}
			r.snaps.update(r.entries, k.service)
			r.emit(Event{Type: EventDeregistered, Instance: e.instance(), OldStatus: e.status, NewStatus: e.status, Reason: "reaped", Time: now})
		}
	}
	for k, t := range r.tombs {
		if now.Sub(t.at) > r.reap {
			delete(r.tombs, k)
		}
	}
}

// nodeFailed marks every instance of a dead node unhealthy at once.
func (r *registry) nodeFailed(node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	r.dead[node] = now
	for _, e := range r.entries {
		if e.rec.Node == node && !e.nodeFailed {
			e.nodeFailed = true
			r.setStatusLocked(e, "node-failed", now)
		}
	}
}

// nodeAlive clears the node-failed verdict on a node's instances. Those whose
// last heartbeat is too old stay unhealthy until a fresh one arrives.
func (r *registry) nodeAlive(node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.dead[node]; !ok {
		return
	}
	delete(r.dead, node)
	now := r.clk.Now()
	for _, e := range r.entries {
		if e.rec.Node != node || !e.nodeFailed {
			continue
		}
		e.nodeFailed = false
		if e.rec.Heartbeats && now.Sub(e.lastHeartbeat) > r.timeout {
			e.timedOut = true
		}
		r.setStatusLocked(e, "recovered", now)
	}
}

// nodeLeft deregisters every instance of a node that left gracefully.
func (r *registry) nodeLeft(node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.dead, node)
	for _, e := range r.entries {
		if e.rec.Node == node {
			tomb := wire.Record{Service: e.rec.Service, ID: e.rec.ID, Node: node,
				Incarnation: e.rec.Incarnation, Seq: e.rec.Seq + 1, Deleted: true}
			r.applyLocked(&tomb, "left")
		}
	}
}

// healthLoop runs the health checker every HealthCheckInterval.
func (n *Node) healthLoop() {
	t := n.clk.NewTicker(n.cfg.HealthCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stopCh:
			return
		case <-t.C():
			n.reg.check()
		}
	}
}

// reconnectLoop periodically rejoins one node memberlist declared dead, as
// serf does: after a partition heals, the two sides would otherwise never
// gossip again once the dead-node gossip window has passed.
func (n *Node) reconnectLoop() {
	t := time.NewTicker(n.cfg.Gossip.ReconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stopCh:
			return
		case <-t.C:
		}
		n.failedMu.Lock()
		var addrs []string
		for name, f := range n.failed {
			if time.Since(f.since) > n.cfg.Gossip.ReconnectTimeout {
				delete(n.failed, name)
				continue
			}
			addrs = append(addrs, f.addr)
		}
		n.failedMu.Unlock()
		if len(addrs) == 0 {
			continue
		}
		addr := addrs[rand.IntN(len(addrs))]
		if _, err := n.ml.Join([]string{addr}); err != nil {
			n.log.Debug("reconnect failed", "addr", addr, "err", err)
		}
	}
}
