// This file holds the heartbeat sender: rounds that advance every local
// instance's sequence number and gossip the heartbeats in batches, and the
// receiving side that applies them to the registry.

package aegis

import (
	"github.com/aegisipc/aegis/internal/wire"
)

// delivery says how a heartbeat round reaches the cluster.
type delivery bool

const (
	// gossipOnly queues the batches for gossip: the periodic rounds.
	gossipOnly delivery = false
	// gossipAndDirect also sends them straight to every member: a
	// self-reported status change that routing should see at once.
	gossipAndDirect delivery = true
)

// maxBatchBytes bounds one heartbeat message so it fits a gossip packet
// beside other broadcasts.
const maxBatchBytes = 900

// heartbeatRound advances the sequence number of every local instance whose
// heartbeats are not paused, applies the heartbeats locally and gossips them
// in as few batches as fit a packet.
func (n *Node) heartbeatRound(how delivery) {
	if !n.cfg.HeartbeatEnabled {
		return
	}
	n.hbMu.Lock()
	defer n.hbMu.Unlock()
	keys, states := n.beating()
	if len(keys) == 0 {
		return
	}
	beats := n.reg.localHeartbeats(keys, states)
	now := n.clk.Now().UnixNano()
	for len(beats) > 0 {
		k := batchLen(beats)
		batch := &wire.HeartbeatBatch{Node: n.name, Time: now, Beats: beats[:k]}
		beats = beats[k:]
		msg, err := wire.Encode(batch)
		if err != nil {
			n.log.Error("encode heartbeat", "err", err)
			continue
		}
		n.gossip.queueHeartbeats(batch, msg)
		if how == gossipAndDirect {
			n.gossip.sendDirectTwice(wire.Direct(msg))
		}
		n.stats.heartbeatsSent.Add(uint64(k))
		n.met.heartbeatsSent.Add(bg, int64(k))
	}
}

// beatState is what a local instance's heartbeat reports besides being
// alive: its self-reported status and its role in its role group.
type beatState struct {
	status Status
	role   Role
	epoch  uint64
}

// beating returns the local instances whose heartbeats are due, with what
// their heartbeats report.
func (n *Node) beating() ([]instKey, []beatState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	keys := make([]instKey, 0, len(n.local))
	states := make([]beatState, 0, len(n.local))
	for k, r := range n.local {
		if r.paused.Load() || r.done.Load() {
			continue
		}
		keys = append(keys, k)
		states = append(states, beatState{status: Status(r.status.Load()), role: Role(r.role.cur.Load()), epoch: r.role.epoch.Load()})
	}
	return keys, states
}

// batchLen returns how many of beats fill one batch of up to maxBatchBytes
// (each beat costs about its strings plus 24 bytes); at least one.
func batchLen(beats []wire.Heartbeat) int {
	size, k := 0, 0
	for k < len(beats) && (k == 0 || size+len(beats[k].Service)+len(beats[k].ID)+24 <= maxBatchBytes) {
		size += len(beats[k].Service) + len(beats[k].ID) + 24
		k++
	}
	return k
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
func (r *registry) localHeartbeats(keys []instKey, states []beatState) []wire.Heartbeat {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	out := make([]wire.Heartbeat, 0, len(keys))
	for i, k := range keys {
		e, ok := r.entries[k]
		if !ok || e.rec.Node != r.self {
			continue
		}
		if e.rec.Seq >= wire.MaxSeq {
			// Out of sequence numbers (a refuted forgery took them): a
			// new incarnation, announced as a record by the next round's
			// pull or the owner's refutation; until then peers see its
			// heartbeats as for an unknown record and pull it.
			e.rec.Incarnation, e.rec.Seq = successor(e.rec.Incarnation, e.rec.Seq)
		}
		e.rec.Seq++
		e.rec.Status = uint8(states[i].status)
		e.rec.Time = now.UnixNano()
		r.setRoleLocked(e, uint8(states[i].role), states[i].epoch, "", now)
		r.heartbeatLocked(e, now)
		out = append(out, wire.Heartbeat{Service: k.service, ID: k.id, Incarnation: e.rec.Incarnation,
			Seq: e.rec.Seq, Status: e.rec.Status, Role: e.rec.Role, Epoch: e.rec.Epoch})
	}
	return out
}

// heartbeat applies a heartbeat received in a batch from node. It reports
// whether it was new (worth re-broadcasting) and whether the instance was
// unknown. A heartbeat for an instance another node hosts is ignored: only
// an instance's own node beats for it.
func (r *registry) heartbeat(hb *wire.Heartbeat, node string, sent int64) (fresh, unknown bool) {
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
	if hb.Incarnation < e.rec.Incarnation || hb.Seq <= e.rec.Seq || e.rec.Node != node {
		return false, false
	}
	now := r.clk.Now()
	e.rec.Seq = hb.Seq
	e.rec.Status = hb.Status
	e.rec.Time = sent
	r.setRoleLocked(e, hb.Role, hb.Epoch, "", now)
	r.heartbeatLocked(e, now)
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
