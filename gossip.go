package aegis

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/memberlist"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/aegisipc/aegis/internal/wire"
)

var bg = context.Background()

// delegate connects memberlist to the Node. memberlist calls NotifyMsg,
// GetBroadcasts, LocalState and MergeRemoteState from its own goroutines,
// possibly concurrently; each returns quickly and never blocks on the
// network.
type delegate struct{ n *Node }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
)

// NodeMeta is unused: records travel as broadcasts, never in node metadata
// (which memberlist caps at 512 bytes).
func (d *delegate) NodeMeta(limit int) []byte { return nil }

func (d *delegate) NotifyMsg(b []byte) { d.n.handleGossip(b) }

// GetBroadcasts fills a gossip packet: records and tombstones first, then
// heartbeat batches in the space left.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	out := d.n.queue.GetBroadcasts(overhead, limit)
	for _, b := range out {
		limit -= overhead + len(b)
	}
	return append(out, d.n.hbQueue.GetBroadcasts(overhead, limit)...)
}

func (d *delegate) LocalState(join bool) []byte {
	b, err := wire.Encode(&wire.State{Node: d.n.name, Records: d.n.reg.state()})
	if err != nil {
		d.n.log.Error("encode local state", "err", err)
		return nil
	}
	return b
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	n := d.n
	msg, err := wire.Decode(buf)
	if err == nil && msg.Type != wire.MsgState {
		err = errors.New("push/pull carried a non-state message")
	}
	if err != nil {
		n.dropGossip("push-pull", err)
		return
	}
	n.stats.gossipReceived.Add(1)
	for i := range msg.State.Records {
		n.applyRecord(&msg.State.Records[i])
	}
}

func (d *delegate) NotifyJoin(node *memberlist.Node) {
	n := d.n
	if node.Name == n.name {
		return
	}
	n.failedMu.Lock()
	delete(n.failed, node.Name)
	n.failedMu.Unlock()
	peer := n.setPeer(node)
	n.reg.nodeAlive(node.Name)
	// Introduce our instances to the newcomer straight away instead of
	// waiting for gossip or push/pull to carry them.
	n.queueDirect(outMsg{to: peer, introduce: true})
}

func (d *delegate) NotifyLeave(node *memberlist.Node) {
	n := d.n
	if node.Name == n.name {
		return
	}
	n.peersMu.Lock()
	delete(n.peers, node.Name)
	n.peersMu.Unlock()
	if node.State == memberlist.StateLeft {
		n.log.Info("node left", "peer", node.Name)
		n.reg.nodeLeft(node.Name)
		return
	}
	n.log.Warn("node failed", "peer", node.Name)
	n.failedMu.Lock()
	n.failed[node.Name] = failedNode{addr: node.Address(), since: n.clk.Now()}
	n.failedMu.Unlock()
	n.reg.nodeFailed(node.Name)
}

func (d *delegate) NotifyUpdate(node *memberlist.Node) {
	if node.Name != d.n.name {
		d.n.setPeer(node)
	}
}

// setPeer records a copy of node, called from a membership callback (under
// memberlist's lock), and returns it. The copy's fields, Addr's bytes
// included, are never written again: memberlist replaces them, it does not
// modify them.
func (n *Node) setPeer(node *memberlist.Node) *memberlist.Node {
	cp := *node
	n.peersMu.Lock()
	n.peers[node.Name] = &cp
	n.peersMu.Unlock()
	return &cp
}

// peerList returns the copies of the other live members' Nodes (never this
// node's own).
func (n *Node) peerList() []*memberlist.Node {
	n.peersMu.RLock()
	defer n.peersMu.RUnlock()
	out := make([]*memberlist.Node, 0, len(n.peers))
	for _, p := range n.peers {
		out = append(out, p)
	}
	return out
}

// handleGossip decodes and applies one gossip message. Bad messages are
// dropped with a log line and a counter. What is new to this node is
// re-broadcast (epidemic gossip), unless it came straight from its origin,
// which reaches every member directly and gossips it itself.
func (n *Node) handleGossip(b []byte) {
	msg, err := wire.Decode(b)
	if err != nil {
		n.dropGossip("message", err)
		return
	}
	n.stats.gossipReceived.Add(1)
	switch msg.Type {
	case wire.MsgRecord:
		if n.applyRecord(msg.Record) && !msg.Direct {
			n.broadcast("r:"+msg.Record.Service+"/"+msg.Record.ID, append([]byte(nil), b...))
		}
	case wire.MsgHeartbeats:
		batch := msg.Heartbeats
		anyFresh := false
		for i := range batch.Beats {
			fresh, unknown := n.reg.heartbeat(&batch.Beats[i], batch.Time)
			n.stats.heartbeatsReceived.Add(1)
			if unknown {
				n.stats.heartbeatsUnknown.Add(1)
				n.requestPull(batch.Node)
			}
			anyFresh = anyFresh || fresh
		}
		if anyFresh && !msg.Direct && batch.Node != n.name {
			n.hbQueue.Queue(batchName(batch), append([]byte(nil), b...))
		}
	default:
		n.dropGossip("message", errors.New("state message outside push/pull"))
	}
}

// applyRecord merges a record and reports whether it was new here.
func (n *Node) applyRecord(rec *wire.Record) bool {
	if rec.Node == n.name && !rec.Deleted {
		n.refute(rec)
		return false
	}
	return n.reg.apply(rec, reasonFor(rec))
}

func reasonFor(rec *wire.Record) string {
	if rec.Deleted {
		return "deregistered"
	}
	return "registered"
}

// refute handles a live record that claims to be ours. If we do not host
// that instance (a previous life of this node name), gossip a tombstone that
// supersedes it.
func (n *Node) refute(rec *wire.Record) {
	k := instKey{rec.Service, rec.ID}
	n.mu.Lock()
	_, local := n.local[k]
	n.mu.Unlock()
	if local {
		return
	}
	tomb := wire.Record{Service: rec.Service, ID: rec.ID, Node: n.name, Incarnation: rec.Incarnation,
		Seq: rec.Seq + 1, Time: n.clk.Now().UnixNano(), Deleted: true}
	n.reg.apply(&tomb, "deregistered")
	if msg, err := wire.Encode(&tomb); err == nil {
		n.announce("r:"+k.String(), msg)
	}
}

func (n *Node) dropGossip(where string, err error) {
	n.stats.gossipDropped.Add(1)
	n.met.gossipDropped.Add(bg, 1, metric.WithAttributes(attribute.String("where", where)))
	n.log.Warn("dropped bad gossip", "where", where, "err", err)
}

// announce queues msg for gossip and sends it straight to every live member
// over UDP. Registrations, deregistrations and self-reported status changes
// use it: they are rare, and direct fan-out makes them visible cluster-wide
// within one network round trip, while gossip from the origin and push/pull
// repair whatever a lost packet missed.
func (n *Node) announce(name string, msg []byte) {
	n.broadcast(name, msg)
	n.sendDirectTwice(wire.Direct(msg))
}

// sendDirectTwice sends msg straight to every member now and once more a
// moment later. Receivers do not re-gossip what they got directly (every
// member got it), so a packet lost in a burst (a hundred nodes announcing
// at once overflow socket buffers) would otherwise wait for the origin's
// own gossip or for a pull; the repeat makes such a loss cost a few hundred
// milliseconds. Applying a message twice is harmless.
func (n *Node) sendDirectTwice(msg []byte) {
	n.queueDirect(outMsg{msg: msg, repeat: true})
}

// reannounceDelay is the least wait before an announcement is repeated (up
// to twice that, with jitter).
const reannounceDelay = 150 * time.Millisecond

// outMsg is a direct send for outboxLoop: msg to one node, or to every
// member when to is nil; introduce sends this node's records and
// heartbeats to a newcomer instead of msg.
type outMsg struct {
	to        *memberlist.Node
	msg       []byte
	introduce bool
	repeat    bool // send again after reannounceDelay (see sendDirectTwice)
}

// delayed is an outMsg waiting in outboxLoop until due.
type delayed struct {
	due time.Time
	m   outMsg
}

// outboxSize bounds pending direct sends; beyond it they are dropped (gossip
// still carries the same messages).
const outboxSize = 1024

func (n *Node) sendDirect(to *memberlist.Node, msg []byte) {
	n.queueDirect(outMsg{to: to, msg: msg})
}

func (n *Node) queueDirect(m outMsg) {
	select {
	case n.outbox <- m:
	default:
		n.log.Debug("outbox full: direct send dropped")
	}
}

// outboxLoop performs direct sends off the caller's goroutine (memberlist
// callbacks must not block, and Register should not wait for N sends).
// Repeats wait here, on one timer that stops with the loop.
func (n *Node) outboxLoop() {
	var later []delayed
	var next time.Time // when timer fires; zero while it is stopped
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	arm := func(due time.Time) {
		if next.IsZero() || due.Before(next) {
			next = due
			timer.Reset(time.Until(due))
		}
	}
	for {
		select {
		case <-n.stopCh:
			return
		case m := <-n.outbox:
			n.deliver(m)
			if m.repeat {
				due := time.Now().Add(reannounceDelay + time.Duration(rand.Int64N(int64(reannounceDelay))))
				later = append(later, delayed{due: due, m: outMsg{to: m.to, msg: m.msg}})
				arm(due)
			}
		case now := <-timer.C:
			next = time.Time{}
			keep := later[:0]
			for _, d := range later {
				if d.due.After(now) {
					keep = append(keep, d)
					continue
				}
				n.deliver(d.m)
			}
			clear(later[len(keep):])
			later = keep
			for _, d := range later {
				arm(d.due)
			}
		}
	}
}

func (n *Node) deliver(m outMsg) {
	ml := n.ml
	if m.introduce {
		recs := n.reg.localRecords()
		for i := range recs {
			b, err := wire.Encode(&recs[i])
			if err != nil {
				continue
			}
			if err := ml.SendBestEffort(m.to, wire.Direct(b)); err != nil {
				n.log.Debug("introduce failed", "peer", m.to.Name, "err", err)
				return
			}
		}
		return
	}
	targets := []*memberlist.Node{m.to}
	if m.to == nil {
		targets = n.peerList()
	}
	for _, t := range targets {
		if err := ml.SendBestEffort(t, m.msg); err != nil {
			n.log.Debug("direct send failed", "peer", t.Name, "err", err)
		}
	}
}

// requestPull schedules one push/pull exchange, at most once per
// pullInterval: a heartbeat for an instance this node has never heard of
// means a record broadcast passed it by. origin, the heartbeat's sender,
// surely has the record, so it is asked first.
func (n *Node) requestPull(origin string) {
	now := time.Now().UnixNano()
	last := n.lastPull.Load()
	if now-last < int64(pullInterval) || !n.lastPull.CompareAndSwap(last, now) {
		return
	}
	n.spawn(func() { n.pull(origin) })
}

// pull runs one push/pull state exchange (a memberlist Join with a current
// member): with the member named prefer if there is one, otherwise (or if
// that fails) with up to three random peers until one succeeds.
func (n *Node) pull(prefer string) {
	ml := n.ml
	n.peersMu.RLock()
	p := n.peers[prefer]
	n.peersMu.RUnlock()
	if p != nil {
		if _, err := ml.Join([]string{p.FullAddress().Addr}); err == nil {
			return
		}
	}
	for _, m := range shuffledPeers(n.peerList()) {
		_, err := ml.Join([]string{m.FullAddress().Addr})
		if err == nil {
			return
		}
		n.log.Debug("pull failed", "peer", m.Name, "err", err)
	}
}

// shuffledPeers shuffles peers in place and returns at most three of them.
func shuffledPeers(peers []*memberlist.Node) []*memberlist.Node {
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	return peers[:min(len(peers), 3)]
}

// pullInterval limits pulls triggered by unknown heartbeats.
const pullInterval = 500 * time.Millisecond

// broadcast queues msg for gossip. A newer message with the same name
// replaces an older one still in the queue.
func (n *Node) broadcast(name string, msg []byte) {
	n.queue.Queue(name, msg)
}
