// This file holds the heartbeat sender: rounds that advance every local
// instance's sequence number and gossip the heartbeats (compact ones in
// beats.go, the older batches here), and the receiving side that applies
// them to the registry.

package aegis

import (
	"slices"
	"time"

	"github.com/aegisipc/aegis/internal/wire"
)

// delivery says how a heartbeat round reaches the cluster.
type delivery bool

const (
	// gossipOnly is the periodic round: its messages go straight to every
	// member once (a member that misses one asks others for it, see
	// repair.go), and by gossip too when Gossip.HeartbeatRetransmitMult
	// is set.
	gossipOnly delivery = false
	// gossipAndDirect sends them to every member twice, a moment apart: a
	// self-reported status or role change that routing should see at once.
	gossipAndDirect delivery = true
)

// maxBatchBytes bounds one heartbeat message so it fits a gossip packet
// beside other broadcasts.
const maxBatchBytes = 900

// heartbeatRound advances the sequence number of every local instance whose
// heartbeats are not paused, applies the heartbeats locally and gossips
// them: as compact messages (beats.go) naming the instances by index, as
// few as fit a packet each, and in the older batches for an instance
// without an index.
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
	n.beatRounds++
	compact, beats := n.reg.localHeartbeats(keys, states, n.beatRounds)
	now := n.clk.Now().UnixNano()
	msgs, encs := n.compactMessages(compact, n.beatRounds)
	for i, m := range msgs {
		n.gossip.beats.keep(n.name, n.life, n.beatRounds, encs[i], true, n.clk.Now())
		n.sendBeats(beatsName(n.name, m.Entries), encs[i], len(m.Entries), how)
	}
	for len(beats) > 0 {
		k := batchLen(beats)
		batch := &wire.HeartbeatBatch{Node: n.name, Time: now, Beats: beats[:k]}
		beats = beats[k:]
		msg, err := wire.Encode(batch)
		if err != nil {
			n.log.Error("encode heartbeat", "err", err)
			continue
		}
		n.sendBeats(batchName(batch), msg, k, how)
	}
}

// hbGossip reports whether heartbeats also travel by gossip
// (Gossip.HeartbeatRetransmitMult > 0).
func (g *gossiper) hbGossip() bool { return g.cfg.HeartbeatRetransmitMult > 0 }

// sendBeats sends an encoded heartbeat message of count beats straight to
// every member, twice when how says so, and queues it for gossip when
// heartbeats travel by gossip too.
func (n *Node) sendBeats(name string, msg []byte, count int, how delivery) {
	g := n.gossip
	if g.hbGossip() {
		g.enqueue(g.hbQueue, name, msg)
	}
	if how == gossipAndDirect {
		g.sendDirectTwice(wire.Direct(msg))
	} else if !g.queueDirect(outMsg{msg: wire.Direct(msg)}) && !g.hbGossip() {
		// The outbox is full (a burst of announcements): gossip it
		// instead, with the records' retransmit count.
		g.enqueue(g.queue, name, msg)
	}
	n.stats.heartbeatsSent.Add(uint64(count))
	n.met.heartbeatsSent.Add(bg, int64(count))
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
// and applies it to the local view: compact ones for instances with an
// index, the rest in the older form. An instance's sequence number moves
// to round (the node's round count) when that is ahead, so that one
// round's compact heartbeats carry one number and pack small.
func (r *registry) localHeartbeats(keys []instKey, states []beatState, round uint64) ([]wire.Beat, []wire.Heartbeat) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	compact := make([]wire.Beat, 0, len(keys))
	var out []wire.Heartbeat
	for i, k := range keys {
		e, ok := r.entries[k]
		if !ok || e.rec.Node != r.self {
			continue
		}
		if e.rec.Seq >= wire.MaxSeq-round {
			// Out of sequence numbers (a refuted forgery took them): a
			// new incarnation, announced as a record by the next round's
			// pull or the owner's refutation; until then peers see its
			// heartbeats as for an unknown record and pull it.
			e.rec.Incarnation, e.rec.Seq = successor(e.rec.Incarnation, e.rec.Seq)
		}
		e.rec.Seq = max(e.rec.Seq+1, round)
		e.rec.Status = uint8(states[i].status)
		e.rec.Time = now.UnixNano()
		r.setRoleLocked(e, uint8(states[i].role), states[i].epoch, "", now)
		r.heartbeatLocked(e, now)
		if e.rec.Index != 0 {
			compact = append(compact, wire.Beat{Index: e.rec.Index, Seq: e.rec.Seq, Status: e.rec.Status, Role: e.rec.Role, Epoch: e.rec.Epoch})
			continue
		}
		out = append(out, wire.Heartbeat{Service: k.service, ID: k.id, Incarnation: e.rec.Incarnation,
			Seq: e.rec.Seq, Status: e.rec.Status, Role: e.rec.Role, Epoch: e.rec.Epoch})
	}
	return compact, out
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
	r.applyBeatLocked(e, hb.Seq, hb.Status, hb.Role, hb.Epoch, sent, r.clk.Now())
	return true, false
}

// applyBeatLocked takes a newer heartbeat of e's incarnation: its
// sequence number, status, role and epoch, sent at the origin's time sent.
func (r *registry) applyBeatLocked(e *entry, seq uint64, status, role uint8, epoch uint64, sent int64, now time.Time) {
	e.rec.Seq = seq
	e.rec.Status = status
	e.rec.Time = sent
	r.setRoleLocked(e, role, epoch, "", now)
	r.heartbeatLocked(e, now)
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

// localTombstones returns the tombstones of instances this node hosted
// that it stored after since, at most max of them (the newest).
func (r *registry) localTombstones(since time.Time, max int) []wire.Record {
	r.mu.RLock()
	var out []tombstone
	for _, t := range r.tombs {
		if t.rec.Node == r.self && t.at.After(since) {
			out = append(out, t)
		}
	}
	r.mu.RUnlock()
	if len(out) > max {
		slices.SortFunc(out, func(a, b tombstone) int { return b.at.Compare(a.at) })
		out = out[:max]
	}
	recs := make([]wire.Record, len(out))
	for i := range out {
		recs[i] = out[i].rec
	}
	return recs
}
