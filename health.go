// This file holds the health checker: the absolute heartbeat timeout,
// reaping, and the verdicts memberlist passes on about whole nodes (failed,
// alive again, left).

package aegis

import (
	"time"

	"github.com/aegisipc/aegis/internal/clock"
	"github.com/aegisipc/aegis/internal/wire"
)

// stallThreshold is how much later than due a health check must run for
// the node to conclude it was not running (stopped, paused, starved).
const stallThreshold = time.Second

// healthTick runs one health check. On the wall clock it first looks for
// a stall of this process: when a check runs much later than due, this
// node was not running, so it received no heartbeats either, and the
// stall is forgiven to every instance instead of timing them all out
// before the heartbeats waiting in its socket buffers are read. (A stall
// shows only on the wall clock; a test's fake clock has none.)
func (n *Node) healthTick() {
	if _, wall := n.clk.(clock.Real); wall {
		now := time.Now()
		if last := n.lastHealth.Swap(now.UnixNano()); last != 0 {
			if stall, ok := stalled(now.Sub(time.Unix(0, last)), n.cfg.HealthCheckInterval); ok {
				n.log.Info("this node was stalled; its heartbeat ages exclude the stall", "stall", stall)
				n.reg.forgive(stall)
			}
		}
	}
	n.reg.check()
}

// stalled reports how long this node was not running, given the time
// between two health checks due interval apart, when that is a stall
// (more than stallThreshold late).
func stalled(gap, interval time.Duration) (time.Duration, bool) {
	late := gap - interval
	return late, late > stallThreshold
}

// forgive moves every instance's last heartbeat d later (never past now).
func (r *registry) forgive(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	for _, e := range r.entries {
		if t := e.lastHeartbeat.Add(d); t.Before(now) {
			e.lastHeartbeat = t
		} else {
			e.lastHeartbeat = now
		}
	}
}

// check applies the absolute heartbeat timeout, ends ejections whose time
// is up, reaps long-dead instances and forgets old tombstones.
func (r *registry) check() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	for k, e := range r.entries {
		r.reinstateLocked(e, now)
		if e.rec.Heartbeats && !e.timedOut && now.Sub(e.lastHeartbeat) > r.timeout && !r.ownBeating(k, e) {
			e.timedOut = true
			r.setStatusLocked(e, "heartbeat-timeout", now)
		}
		if (e.timedOut || e.nodeFailed) && !e.badSince.IsZero() && now.Sub(e.badSince) > r.reap {
			r.tombs[k] = tombstone{rec: tombstoneOf(&e.rec, sameVersion, now), at: now}
			r.removeLocked(k, e, "reaped", now)
		}
	}
	for k, t := range r.tombs {
		if now.Sub(t.at) > r.reap {
			delete(r.tombs, k)
		}
	}
	if now.Sub(r.claimsSwept) > r.reap/16 {
		r.claimsSwept = now
		r.sweepClaimsLocked(now)
	}
}

// ownBeating reports whether e is an instance of this node whose
// heartbeats are not paused. Such an instance is alive as long as this node
// runs; it never times out here, even when the whole process was stopped
// for longer than the timeout (its next heartbeat round is due at once).
func (r *registry) ownBeating(k instKey, e *entry) bool {
	return e.rec.Node == r.self && r.beating != nil && r.beating(k)
}

// nodeFailed marks every instance of a dead node unhealthy at once: those
// at callAddr, the dead member's call address, when it is known. A node
// restarted under the same name on another address has registered its new
// instances there, and they are not the dead one's.
func (r *registry) nodeFailed(node, callAddr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	r.dead[node] = deadNode{callAddr: callAddr}
	for _, e := range r.entries {
		if e.rec.Node == node && !e.nodeFailed && r.dead[node].owns(&e.rec) {
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

// nodeLeft deregisters every instance of a node that left gracefully (at
// callAddr, when known, as for nodeFailed).
func (r *registry) nodeLeft(node, callAddr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.dead, node)
	now := r.clk.Now()
	left := deadNode{callAddr: callAddr}
	for _, e := range r.entries {
		if e.rec.Node == node && left.owns(&e.rec) {
			tomb := tombstoneOf(&e.rec, supersede, now)
			r.applyLocked(&tomb, "left")
		}
	}
}

// deadNode is a node memberlist declared dead, with its call address when
// known.
type deadNode struct{ callAddr string }

// owns reports whether rec is an instance of that dead node's life: every
// instance of the node when its call address is unknown, else those at it.
func (d deadNode) owns(rec *wire.Record) bool {
	return d.callAddr == "" || rec.Addr == d.callAddr
}
