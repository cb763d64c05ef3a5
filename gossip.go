package aegis

import (
	"context"
	"errors"

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

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.n.queue.GetBroadcasts(overhead, limit)
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
		n.applyRecord(&msg.State.Records[i], nil)
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
	n.reg.nodeAlive(node.Name)
}

func (d *delegate) NotifyLeave(node *memberlist.Node) {
	n := d.n
	if node.Name == n.name {
		return
	}
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

func (d *delegate) NotifyUpdate(node *memberlist.Node) {}

// handleGossip decodes and applies one gossip message. Bad messages are
// dropped with a log line and a counter.
func (n *Node) handleGossip(b []byte) {
	msg, err := wire.Decode(b)
	if err != nil {
		n.dropGossip("message", err)
		return
	}
	n.stats.gossipReceived.Add(1)
	switch msg.Type {
	case wire.MsgRecord:
		n.applyRecord(msg.Record, b)
	case wire.MsgHeartbeats:
		for i := range msg.Heartbeats {
			hb := &msg.Heartbeats[i]
			fresh, unknown := n.reg.heartbeat(hb)
			n.stats.heartbeatsReceived.Add(1)
			if unknown {
				n.stats.heartbeatsUnknown.Add(1)
			}
			if !fresh {
				continue
			}
			out := b
			if len(msg.Heartbeats) > 1 {
				if out, err = wire.Encode([]wire.Heartbeat{*hb}); err != nil {
					continue
				}
			} else {
				out = append([]byte(nil), b...)
			}
			n.broadcast("h:"+hb.Service+"/"+hb.ID, out)
		}
	default:
		n.dropGossip("message", errors.New("state message outside push/pull"))
	}
}

// applyRecord merges a record and re-broadcasts it when it was new. raw is
// its encoding if it arrived as a message of its own.
func (n *Node) applyRecord(rec *wire.Record, raw []byte) {
	if rec.Node == n.name && !rec.Deleted {
		n.refute(rec)
		return
	}
	if !n.reg.apply(rec, reasonFor(rec)) {
		return
	}
	var out []byte
	if raw != nil {
		out = append([]byte(nil), raw...)
	} else {
		var err error
		if out, err = wire.Encode(rec); err != nil {
			return
		}
	}
	n.broadcast("r:"+rec.Service+"/"+rec.ID, out)
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
		n.broadcast("r:"+k.String(), msg)
	}
}

func (n *Node) dropGossip(where string, err error) {
	n.stats.gossipDropped.Add(1)
	n.met.gossipDropped.Add(bg, 1, metric.WithAttributes(attribute.String("where", where)))
	n.log.Warn("dropped bad gossip", "where", where, "err", err)
}

// broadcast queues msg for gossip. A newer message with the same name
// replaces an older one still in the queue.
func (n *Node) broadcast(name string, msg []byte) {
	n.queue.QueueBroadcast(&broadcast{name: name, msg: msg})
}

type broadcast struct {
	name string
	msg  []byte
}

var _ memberlist.NamedBroadcast = (*broadcast)(nil)

func (b *broadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*broadcast)
	return ok && o.name == b.name
}
func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}
