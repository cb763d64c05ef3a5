package aegis

import (
	"math/rand/v2"
	"time"

	"github.com/aegisipc/aegis/internal/clock"

	"github.com/aegisipc/aegis/internal/wire"
)

// heartbeatLoop sends a heartbeat round on each tick of t.
func (n *Node) heartbeatLoop(t clock.Ticker) {
	defer t.Stop()
	for {
		select {
		case <-n.stopCh:
			return
		case <-t.C():
		}
		n.heartbeatRound(false)
	}
}

// maxBatchBytes bounds one heartbeat message so it fits a gossip packet
// beside other broadcasts.
const maxBatchBytes = 900

// heartbeatRound advances the sequence number of every local instance whose
// heartbeats are not paused, applies the heartbeats locally and gossips them
// in as few batches as fit a packet. direct also sends the batches straight
// to every member (used when a self-reported status changes).
func (n *Node) heartbeatRound(direct bool) {
	if !n.cfg.HeartbeatEnabled {
		return
	}
	n.hbMu.Lock()
	defer n.hbMu.Unlock()
	n.mu.Lock()
	keys := make([]instKey, 0, len(n.local))
	statuses := make([]Status, 0, len(n.local))
	for k, r := range n.local {
		if r.paused.Load() || r.done.Load() {
			continue
		}
		keys = append(keys, k)
		statuses = append(statuses, Status(r.status.Load()))
	}
	n.mu.Unlock()
	if len(keys) == 0 {
		return
	}
	beats := n.reg.localHeartbeats(keys, statuses)
	now := n.clk.Now().UnixNano()
	for len(beats) > 0 {
		// Fill a batch up to maxBatchBytes (each beat costs about its
		// strings plus 24 bytes).
		size, k := 0, 0
		for k < len(beats) && (k == 0 || size+len(beats[k].Service)+len(beats[k].ID)+24 <= maxBatchBytes) {
			size += len(beats[k].Service) + len(beats[k].ID) + 24
			k++
		}
		batch := &wire.HeartbeatBatch{Node: n.name, Time: now, Beats: beats[:k]}
		beats = beats[k:]
		msg, err := wire.Encode(batch)
		if err != nil {
			n.log.Error("encode heartbeat", "err", err)
			continue
		}
		name := batchName(batch)
		n.hbQueue.Queue(name, msg)
		if direct {
			n.sendDirectTwice(wire.Direct(msg))
		}
		n.stats.heartbeatsSent.Add(uint64(k))
		n.met.heartbeatsSent.Add(bg, int64(k))
	}
}

// batchName names a heartbeat batch in the broadcast queue: a newer batch
// from the same node starting with the same instance replaces an older one.
func batchName(b *wire.HeartbeatBatch) string {
	if len(b.Beats) == 0 {
		return "h:" + b.Node
	}
	return "h:" + b.Node + "/" + b.Beats[0].Service + "/" + b.Beats[0].ID
}

// localHeartbeats makes the next heartbeat of each local instance in keys
// and applies it to the local view.
func (r *registry) localHeartbeats(keys []instKey, statuses []Status) []wire.Heartbeat {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	out := make([]wire.Heartbeat, 0, len(keys))
	for i, k := range keys {
		e, ok := r.entries[k]
		if !ok || e.rec.Node != r.self {
			continue
		}
		e.rec.Seq++
		e.rec.Status = uint8(statuses[i])
		e.rec.Time = now.UnixNano()
		r.heartbeatLocked(e, now)
		out = append(out, wire.Heartbeat{Service: k.service, ID: k.id, Incarnation: e.rec.Incarnation,
			Seq: e.rec.Seq, Status: e.rec.Status})
	}
	return out
}

// heartbeat applies a received heartbeat. It reports whether it was new
// (worth re-broadcasting) and whether the instance was unknown.
func (r *registry) heartbeat(hb *wire.Heartbeat, sent int64) (fresh, unknown bool) {
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
	e.rec.Time = sent
	r.heartbeatLocked(e, r.clk.Now())
	return true, false
}

// localRecords returns the records of instances this node hosts.
func (r *registry) localRecords() []wire.Record {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []wire.Record
	for _, e := range r.entries {
		if e.rec.Node == r.self {
			out = append(out, e.rec)
		}
	}
	return out
}

// check applies the absolute heartbeat timeout, reaps long-dead instances
// and forgets old tombstones.
func (r *registry) check() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	for k, e := range r.entries {
		r.reinstateLocked(e, now, r.ejectAfter)
		if e.rec.Heartbeats && !e.timedOut && now.Sub(e.lastHeartbeat) > r.timeout {
			e.timedOut = true
			r.setStatusLocked(e, "heartbeat-timeout", now)
		}
		if (e.timedOut || e.nodeFailed) && !e.badSince.IsZero() && now.Sub(e.badSince) > r.reap {
			delete(r.entries, k)
			r.tombs[k] = tombstone{rec: wire.Record{Service: k.service, ID: k.id, Node: e.rec.Node,
				Incarnation: e.rec.Incarnation, Seq: e.rec.Seq, Deleted: true}, at: now}
			r.snaps.markStale(k.service)
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

// healthLoop runs the health checker on each tick of t.
func (n *Node) healthLoop(t clock.Ticker) {
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
