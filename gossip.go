// This file holds the gossiper: the part of a Node that owns memberlist,
// the broadcast queues and the handling of every gossip message received.

package aegis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/aegisipc/aegis/internal/bqueue"
	"github.com/aegisipc/aegis/internal/clock"
	"github.com/aegisipc/aegis/internal/ratelog"
	"github.com/aegisipc/aegis/internal/wire"
)

var bg = context.Background()

// gossiper runs memberlist for a Node and everything that travels through
// it: record and heartbeat broadcasts, direct sends (outbox.go), pulls, and
// the list of peers and failed nodes (members.go). It writes what it
// learns into the registry. Its goroutines are counted by the Node (spawn)
// and stop with stopCh.
type gossiper struct {
	name     string
	log      *slog.Logger
	clk      clock.Clock
	cfg      GossipConfig
	reg      *registry
	stats    *nodeStats
	met      *nodeMetrics
	stopCh   <-chan struct{}
	spawn    func(func()) bool
	hosts    func(instKey) bool  // whether this node hosts the instance now
	limits   wire.Limits         // what a received message may hold
	warn     *ratelog.Limiter    // log lines peers can cause at will
	keyring  *memberlist.Keyring // nil: gossip unencrypted
	callAddr string              // this node's call address, told to peers in its node metadata

	ml      *memberlist.Memberlist
	mlp     atomic.Pointer[memberlist.Memberlist] // ml, for callbacks that can run during Create
	queue   *bqueue.Queue                         // records and tombstones
	hbQueue *bqueue.Queue                         // heartbeat batches
	recent  *recentBodies                         // compact heartbeat messages received lately
	recRecs *recentBodies                         // record messages applied lately (recentRecordWindow)
	recAsks *recordAsks                           // records asked of their origins, and sent on request (repair.go)
	beats   *beatStore                            // each member's newest heartbeats, for repair (repair.go)
	outbox  chan outMsg                           // direct sends, run by outboxLoop

	peersMu sync.RWMutex // guards peers
	// peers holds a copy of every other live member's memberlist.Node,
	// taken in the membership callbacks (memberlist holds its lock then).
	// memberlist updates its own Node structs in place, so reading those
	// (Members()) from another goroutine races with it.
	peers map[string]*memberlist.Node

	failed failedNodes

	// conflict is a live-looking node that claims this node's name at
	// another address, as memberlist reported it during a join.
	conflict atomic.Pointer[memberlist.Node]
	// joining is set while a Join has not yet ruled out another live node
	// with this name; records claiming this name are not refuted then
	// (they may be that node's), the catch-up pull brings them again.
	joining atomic.Int32

	lastPull atomic.Int64  // clock time (unix ns) of the last pull triggered by an unknown heartbeat
	pulls    atomic.Uint64 // pulls run (tests)

	turn             atomic.Uint64 // which queue fills the next packet first (GetBroadcasts)
	syncKick         chan struct{} // syncSoon's requests to syncLoop (1 pending at most)
	pushPulls        atomic.Uint64 // push/pull states sent (see LocalState)
	pushPullInterval time.Duration // cfg.PushPullInterval
	hbInterval       time.Duration // Config.HeartbeatInterval; 0 when heartbeats are off
}

// newGossiper builds the gossiper of n and starts memberlist (which may
// call back into it before this returns).
func newGossiper(n *Node) (*gossiper, error) {
	g := &gossiper{
		name: n.name, log: n.log, clk: n.clk, cfg: n.cfg.Gossip, pushPullInterval: n.cfg.Gossip.PushPullInterval, reg: n.reg, stats: &n.stats, met: n.met,
		stopCh: n.stopCh, spawn: n.spawn,
		hosts:   func(k instKey) bool { return n.server.lookup(k.service, k.id) != nil },
		limits:  wire.DefaultLimits(),
		warn:    ratelog.New(n.log, time.Minute, 5),
		keyring: n.keyring, callAddr: n.tr.CallAddr(),
		peers:    make(map[string]*memberlist.Node),
		failed:   failedNodes{m: make(map[string]failedNode)},
		outbox:   make(chan outMsg, outboxSize),
		syncKick: make(chan struct{}, 1),
		recent:   newRecentBodies(recentMax, 0),
		recRecs:  newRecentBodies(recentMax, recentRecordWindow),
		recAsks:  newRecordAsks(),
		beats:    newBeatStore(),
	}
	if n.cfg.HeartbeatEnabled {
		g.hbInterval = n.cfg.HeartbeatInterval
	}
	numNodes := func() int {
		if ml := g.mlp.Load(); ml != nil {
			return ml.NumMembers()
		}
		return 1
	}
	g.queue = bqueue.New(g.cfg.RetransmitMult, numNodes)
	g.hbQueue = bqueue.New(g.cfg.HeartbeatRetransmitMult, numNodes)
	// A message that cannot fit a packet would never leave a queue, and
	// received messages are re-broadcast, so both queues are bounded.
	g.queue.Bound(g.limits.MaxRecordSize, maxQueued)
	g.hbQueue.Bound(g.limits.MaxBatchSize, maxQueued)
	ml, err := memberlist.Create(g.memberlistConfig(n.cfg, n.tr))
	if err != nil {
		return nil, err
	}
	g.ml = ml
	g.mlp.Store(ml)
	return g, nil
}

// start starts the outbox, reconnect and sync loops.
func (g *gossiper) start() {
	timer := g.clk.NewTimer(time.Hour)
	timer.Stop()
	g.spawn(func() { g.outboxLoop(timer) })
	reconnect := g.clk.NewTicker(g.cfg.ReconnectInterval)
	g.spawn(func() { everyTick(g.stopCh, reconnect, g.reconnect) })
	g.spawn(g.syncLoop)
	if g.hbInterval > 0 {
		repair := g.clk.NewTicker(repairRetry(g.hbInterval))
		g.spawn(func() { g.repairLoop(repair) })
	}
}

func (g *gossiper) memberlistConfig(c Config, tr memberlist.NodeAwareTransport) *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.Name = g.name
	mc.Transport = tr
	mc.ProbeInterval = c.Gossip.ProbeInterval
	mc.ProbeTimeout = c.Gossip.ProbeTimeout
	mc.SuspicionMult = c.Gossip.SuspicionMult
	mc.GossipInterval = c.Gossip.GossipInterval
	mc.GossipNodes = c.Gossip.GossipNodes
	mc.RetransmitMult = c.Gossip.RetransmitMult
	mc.PushPullInterval = c.Gossip.PushPullInterval
	mc.GossipToTheDeadTime = c.Gossip.GossipToTheDeadTime
	mc.TCPTimeout = c.Gossip.TCPTimeout
	// A node restarted under its name on a new address takes the name
	// back as soon as the old address has been declared dead, instead of
	// being refused until memberlist forgets the dead node.
	mc.DeadNodeReclaimTime = time.Nanosecond
	// Heartbeats keep the broadcast queue busy, so nearly every gossip
	// round sends packets; memberlist's LZW compression of each one costs
	// far more CPU than the bytes it saves.
	mc.EnableCompression = false
	// Every member registering at once sends each node 2(N−1) messages
	// within a few hundred milliseconds (each direct send and its repeat);
	// memberlist's default queue of 1,024 between its packet reader and
	// NotifyMsg dropped part of such a burst at 500 nodes, and each drop
	// cost a pair a repeat or a record ask. The queue holds references to
	// packets already read, a few hundred bytes each.
	mc.HandoffQueueDepth = handoffQueueDepth
	mc.Keyring = g.keyring
	mc.Label = c.ClusterName
	advertise := c.AdvertiseAddr
	if ga, ok := tr.(interface{ GossipAddr() string }); ok && advertise == "" {
		// A bind-all address is not one to advertise: memberlist then asks
		// the transport, which picks a private IP of this machine.
		if host, _, err := net.SplitHostPort(ga.GossipAddr()); err == nil && !net.ParseIP(host).IsUnspecified() {
			advertise = ga.GossipAddr()
		}
	}
	if host, port, err := net.SplitHostPort(advertise); err == nil {
		mc.AdvertiseAddr = host
		mc.AdvertisePort, _ = strconv.Atoi(port)
	}
	d := &delegate{g: g}
	mc.Delegate = d
	mc.Events = d
	mc.Conflict = d
	mc.Logger = memberlistLogger(g.log.With("component", "memberlist"))
	return mc
}

// delegate connects memberlist to the gossiper. memberlist calls NotifyMsg,
// GetBroadcasts, LocalState and MergeRemoteState from its own goroutines,
// possibly concurrently; each returns quickly and never blocks on the
// network. The membership callbacks run under memberlist's lock.
type delegate struct{ g *gossiper }

var (
	_ memberlist.Delegate         = (*delegate)(nil)
	_ memberlist.EventDelegate    = (*delegate)(nil)
	_ memberlist.ConflictDelegate = (*delegate)(nil)
)

// NotifyConflict is memberlist's report of two nodes with one name at
// different addresses. About this node's own name, it is kept for Join to
// check whether the other one is alive; about others', it is logged.
func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	g := d.g
	if existing.Name == g.name {
		cp := *other
		g.conflict.Store(&cp)
		return
	}
	g.warn.Warn("name-conflict", "two nodes claim one name", "name", existing.Name, "addr", existing.Address(), "other", other.Address())
}

// pingNode reports whether the live member named name answers a ping
// (within the probe timeout); false for a name that is not a live member.
func (g *gossiper) pingNode(name string) bool {
	if name == g.name {
		return true
	}
	g.peersMu.RLock()
	p := g.peers[name]
	g.peersMu.RUnlock()
	return p != nil && g.aliveAt(p)
}

// aliveAt reports whether a node named name answers a ping at node's
// address (within the probe timeout).
func (g *gossiper) aliveAt(node *memberlist.Node) bool {
	_, err := g.ml.Ping(node.Name, &net.UDPAddr{IP: node.Addr, Port: int(node.Port)})
	return err == nil
}

// NodeMeta tells peers this node's call address (key management calls
// every member there, and a TLS dial checks that the certificate it meets
// belongs to the member at that address). Records travel as broadcasts,
// never in node metadata (which memberlist caps at 512 bytes).
func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.g.callAddr) > limit {
		return nil
	}
	return []byte(d.g.callAddr)
}

func (d *delegate) NotifyMsg(b []byte) {
	d.g.met.gossipBytes.Add(bg, int64(len(b)), d.g.met.bytesIn...)
	d.g.handleGossip(b)
}

// GetBroadcasts fills a gossip packet from the two queues, records and
// tombstones on one, heartbeats on the other. They take turns at filling
// it first, so neither starves the other: a burst of registrations leaves
// heartbeats half the packets, and the heartbeats of thousands of
// instances leave records the other half.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	first, second := d.g.queue, d.g.hbQueue
	if d.g.turn.Add(1)%2 == 0 {
		first, second = second, first
	}
	out := first.GetBroadcasts(overhead, limit)
	limit -= int(sentBytes(out)) + overhead*len(out)
	out = append(out, second.GetBroadcasts(overhead, limit)...)
	if n := sentBytes(out); n > 0 {
		d.g.met.gossipBytes.Add(bg, n, d.g.met.bytesOut...)
	}
	return out
}

// LocalState is this node's registry for a push/pull. Resource claims, of
// which there may be many more than instances, are sent whole on a join
// only; other exchanges carry the claims stored in the last push/pull
// interval and one part of the rest in turn, so that every claim travels
// about once per claimCycle (see claimParts). Gossip and direct sends carry
// each claim when it is made; push/pull repairs what they missed.
func (d *delegate) LocalState(join bool) []byte {
	g := d.g
	parts := claimParts(g.pushPullInterval)
	n := g.pushPulls.Add(1)
	claims := g.reg.claimState(join, g.clk.Now().Add(-g.pushPullInterval), n%parts, parts)
	b, err := wire.Encode(&wire.State{Node: g.name, Records: g.reg.state(), Claims: claims})
	if err != nil {
		d.g.log.Error("encode local state", "err", err)
		return nil
	}
	d.g.met.gossipBytes.Add(bg, int64(len(b)), d.g.met.bytesOut...)
	return b
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	g := d.g
	g.met.gossipBytes.Add(bg, int64(len(buf)), g.met.bytesIn...)
	msg, ok := g.receive(buf, "push-pull")
	if !ok {
		return
	}
	if msg.Type != wire.MsgState {
		g.dropGossip("push-pull", errors.New("push/pull carried a non-state message"))
		return
	}
	for i := range msg.State.Records {
		g.applyRecord(&msg.State.Records[i])
	}
	for i := range msg.State.Claims {
		g.reg.applyClaim(&msg.State.Claims[i])
	}
}

func (d *delegate) NotifyJoin(node *memberlist.Node) {
	g := d.g
	if node.Name == g.name {
		return
	}
	g.failed.remove(node.Name)
	g.log.Info("node joined", "peer", node.Name, "addr", node.Address())
	peer := g.setPeer(node)
	g.reg.nodeAlive(node.Name)
	// Introduce our instances to the newcomer straight away instead of
	// waiting for gossip or push/pull to carry them.
	g.queueDirect(outMsg{to: peer, introduce: true})
}

func (d *delegate) NotifyLeave(node *memberlist.Node) {
	g := d.g
	if node.Name == g.name {
		return
	}
	g.peersMu.Lock()
	delete(g.peers, node.Name)
	g.peersMu.Unlock()
	g.beats.forget(node.Name)
	g.recAsks.forget(node.Name)
	// memberlist passes its Node without the state (left or dead), so a
	// departure counts as graceful when the node said so (its leave notice
	// or its instances' tombstones), or memberlist's own state says left
	// where it is set.
	if g.reg.left(node.Name) || node.State == memberlist.StateLeft {
		g.log.Info("node left", "peer", node.Name)
		g.reg.nodeLeft(node.Name, string(node.Meta))
		return
	}
	g.log.Warn("node failed", "peer", node.Name)
	g.failed.add(node.Name, node.Address(), g.clk.Now())
	g.reg.nodeFailed(node.Name, string(node.Meta))
}

func (d *delegate) NotifyUpdate(node *memberlist.Node) {
	if node.Name != d.g.name {
		d.g.setPeer(node)
	}
}

// handleGossip decodes and applies one gossip message. Bad messages are
// dropped with a log line and a counter. What is new to this node is
// re-broadcast (epidemic gossip), except what came straight from its
// origin, which sends it to every member it knows and gossips it itself;
// what that misses is repaired: a missed registration by the pull that its
// heartbeats trigger where they name an unknown instance, missed
// heartbeats by repair (repair.go), claims by push/pull. Tombstones are
// passed on even then (relay): nothing else would remove an instance
// whose deregistration a member missed, because the origin did not know
// it yet (a large cluster learns of a joining node over seconds) or cannot
// reach it (a fault in one direction only), before the next push/pull.
func (g *gossiper) handleGossip(b []byte) {
	if len(b) > 2 {
		switch wire.MsgType(b[1] &^ wire.FlagDirect) {
		case wire.MsgBeats:
			if g.recent.seen(b[2:], g.clk.Now()) {
				return // a copy of a compact heartbeat message applied already
			}
		case wire.MsgRecord:
			if g.recRecs.seen(b[2:], g.clk.Now()) {
				return // a copy of a record message applied a moment ago
			}
		}
	}
	msg, ok := g.receive(b, "message")
	if !ok {
		return
	}

	switch msg.Type {
	case wire.MsgRecord:
		if g.applyRecord(msg.Record) {
			g.recRecs.add(b[2:], g.clk.Now())
			if !msg.Direct || msg.Record.Deleted && g.relayDirect() {
				g.relay(recordName(instKey{msg.Record.Service, msg.Record.ID}), b, msg.Direct)
			}
		}
	case wire.MsgHeartbeats:
		g.applyHeartbeats(msg.Heartbeats, b, msg.Direct)
	case wire.MsgBeats:
		g.applyCompact(msg.Beats, b, msg.Direct)
	case wire.MsgClaims:
		fresh := false
		for i := range msg.Claims.Claims {
			fresh = g.reg.applyClaim(&msg.Claims.Claims[i]) || fresh
		}
		if fresh && !msg.Direct && len(msg.Claims.Claims) > 0 {
			g.enqueue(g.queue, claimBatchName(msg.Claims), append([]byte(nil), b...))
		}
	case wire.MsgLeave:
		if g.noteLeave(msg.Leave) && !msg.Direct {
			g.enqueue(g.queue, leaveName(msg.Leave.Node), append([]byte(nil), b...))
		}
	case wire.MsgWant:
		g.answerWant(msg.Want)
	default:
		g.dropGossip("message", errors.New("state message outside push/pull"))
	}
}

// receive decodes a message from the network and checks it against the
// limits and rules of what may be stored (wire.Message.Validate) and
// against this node's clock (incarnations no further ahead than
// maxIncarnationLead). Anything else is dropped and counted.
func (g *gossiper) receive(b []byte, where string) (wire.Message, bool) {
	msg, err := wire.DecodeLimited(b, g.limits)
	if err == nil {
		err = msg.Validate(g.limits)
	}
	if err == nil {
		err = g.checkIncarnations(&msg)
	}
	if err != nil {
		g.dropGossip(where, err)
		return msg, false
	}
	g.stats.gossipReceived.Add(1)
	return msg, true
}

// checkIncarnations refuses incarnations further ahead of this node's clock
// than maxIncarnationLead.
func (g *gossiper) checkIncarnations(msg *wire.Message) error {
	limit := g.clk.Now().Add(maxIncarnationLead).UnixNano()
	check := func(inc int64) error {
		if inc > limit {
			return fmt.Errorf("%w: incarnation %d is more than %v ahead of this node's clock", wire.ErrInvalid, inc, maxIncarnationLead)
		}
		return nil
	}
	switch {
	case msg.Record != nil:
		return check(msg.Record.Incarnation)
	case msg.Heartbeats != nil:
		for i := range msg.Heartbeats.Beats {
			if err := check(msg.Heartbeats.Beats[i].Incarnation); err != nil {
				return err
			}
		}
	case msg.State != nil:
		for i := range msg.State.Records {
			if err := check(msg.State.Records[i].Incarnation); err != nil {
				return fmt.Errorf("Records[%d]: %w", i, err)
			}
		}
	}
	return nil
}

// applyHeartbeats applies a received batch (encoded as b) and passes it on
// when anything in it was new here. Heartbeats about this node's own
// instances are never adopted; a newer one is refuted.
func (g *gossiper) applyHeartbeats(batch *wire.HeartbeatBatch, b []byte, direct bool) {
	anyFresh := false
	for i := range batch.Beats {
		hb := &batch.Beats[i]
		if k := (instKey{hb.Service, hb.ID}); g.hosts(k) {
			g.defend(k, hb.Incarnation, hb.Seq, nil)
			continue
		}
		fresh, unknown := g.reg.heartbeat(hb, batch.Node, batch.Time)
		g.stats.heartbeatsReceived.Add(1)
		g.met.heartbeatsRecv.Add(bg, 1)
		if unknown {
			g.stats.heartbeatsUnknown.Add(1)
			g.requestPull(batch.Node)
		}
		anyFresh = anyFresh || fresh
	}
	if anyFresh && !direct && batch.Node != g.name && g.hbGossip() {
		g.enqueue(g.hbQueue, batchName(batch), append([]byte(nil), b...))
	}
}

// applyRecord merges a record and reports whether it was new here. A node
// is the authority on the instances it hosts: it never adopts a foreign
// record or tombstone about one of them, and refutes a newer one.
func (g *gossiper) applyRecord(rec *wire.Record) bool {
	k := instKey{rec.Service, rec.ID}
	if g.hosts(k) {
		g.defend(k, rec.Incarnation, rec.Seq, rec)
		return false
	}
	if rec.Node == g.name && !rec.Deleted {
		if g.joining.Load() == 0 {
			g.refute(rec)
		}
		return false
	}
	reason := "registered"
	switch {
	case rec.Deleted && rec.Status == wire.TombstoneLeft:
		reason = "left"
	case rec.Deleted:
		reason = "deregistered"
	}
	if !g.reg.apply(rec, reason) {
		return false
	}
	if !rec.Deleted && rec.Index != 0 && rec.Life != 0 && rec.Heartbeats {
		g.beats.expect(rec.Node, rec.Life, g.clk.Now())
	}
	return true
}

// defend answers foreign state about an instance this node hosts (a whole
// record, or a heartbeat when rec is nil): when it is newer than this
// node's own version, or the same version saying something else, the own
// record is announced again at a version every peer prefers (see
// registry.reassert), so peers that took the forgery correct themselves
// within one direct send, or a few gossip rounds where that is lost.
func (g *gossiper) defend(k instKey, inc int64, seq uint64, rec *wire.Record) {
	own, ok := g.reg.reassert(k, inc, seq, rec)
	if !ok {
		return
	}
	g.stats.refutations.Add(1)
	g.warn.Warn("refute", "refuted foreign state about a local instance", "service", k.service, "instance", k.id,
		"incarnation", inc, "seq", seq)
	if msg, err := wire.Encode(&own); err == nil {
		g.announce(recordName(k), msg)
	}
}

// refute handles a live record that claims to be ours. If we do not host
// that instance (a previous life of this node name), gossip a tombstone that
// supersedes it.
func (g *gossiper) refute(rec *wire.Record) {
	k := instKey{rec.Service, rec.ID}
	if g.hosts(k) {
		return
	}
	tomb := tombstoneOf(rec, supersede, g.clk.Now())
	g.reg.apply(&tomb, "deregistered")
	if msg, err := wire.Encode(&tomb); err == nil {
		g.announceTombstone(recordName(k), msg)
	}
}

// dropGossip counts a message dropped as malformed, invalid or
// unacceptable, and logs it at most a few times a minute.
func (g *gossiper) dropGossip(where string, err error) {
	g.stats.gossipDropped.Add(1)
	g.met.gossipDropped.Add(bg, 1, metric.WithAttributes(attribute.String("where", where)))
	g.warn.Warn("gossip-"+where, "dropped bad gossip", "where", where, "err", err)
}

// enqueue queues msg for gossip on q, counting what q refuses (a message
// too big for a packet, or a full queue), and reports whether it queued.
func (g *gossiper) enqueue(q *bqueue.Queue, name string, msg []byte) bool {
	if !q.Queue(name, msg) {
		g.stats.broadcastsRefused.Add(1)
		g.warn.Warn("queue-refused", "broadcast not queued: too big for a packet, or the queue is full", "name", name, "bytes", len(msg))
		return false
	}
	return true
}

// relay queues a copy of a record or tombstone received from another node
// (encoded as b) for gossip, without the direct flag when it came
// straight from its origin. A copy that does not fit is dropped quietly:
// its origin gossips it too, and a burst (thousands of registrations) is
// carried by push/pull.
func (g *gossiper) relay(name string, b []byte, direct bool) {
	cp := append([]byte(nil), b...)
	if direct && len(cp) > 1 {
		cp[1] &^= wire.FlagDirect
	}
	if g.queue.Len() < maxQueued/2 {
		g.queue.Queue(name, cp)
	}
}

// relayDirect decides whether this node relays a tombstone it received
// straight from its origin: always in a cluster of up to directRelayers
// other members, otherwise with probability directRelayers over their
// number, so that about directRelayers members relay each one. Relays reach
// a member the origin's direct send missed (it did not know the member
// yet, or the path fails one way); every member relaying every tombstone
// would make a burst of 500 deregistrations at 500 nodes cost about 3
// million gossip sends (500 × 499 relayers × 12 retransmits).
func (g *gossiper) relayDirect() bool {
	g.peersMu.RLock()
	n := len(g.peers)
	g.peersMu.RUnlock()
	return n <= directRelayers || rand.IntN(n) < directRelayers
}

// handoffQueueDepth is memberlist's queue of received messages awaiting
// NotifyMsg (its default is 1,024).
const handoffQueueDepth = 4096

// directRelayers is how many members relay a direct tombstone, on average.
const directRelayers = 8

// maxQueued bounds each broadcast queue; a message past it is not gossiped
// (direct sends and push/pull still carry state).
const maxQueued = 4096

// announce queues msg for gossip and sends it straight to every live member
// over UDP. Registrations, deregistrations and self-reported status changes
// use it: they are rare, and direct fan-out makes them visible cluster-wide
// within one network round trip, while gossip from the origin and push/pull
// repair whatever a lost packet missed. In a burst (thousands of
// registrations at once) the queue or the outbox fills; then what they
// refused goes by push/pull instead (syncSoon).
func (g *gossiper) announce(name string, msg []byte) {
	g.announceDirect(name, outMsg{msg: wire.Direct(msg), repeat: true}, msg)
}

// announceTombstone is announce for a tombstone, sent straight to every
// member a third time a few seconds later. Every member learns of a new
// instance at the latest when its heartbeats name it (missingRecords), but
// nothing names an instance that is gone: a member that lost both direct
// copies in a burst (hundreds of deregistrations at once overflow receive
// queues) would keep it until a relayed copy, the next push/pull (minutes
// in a large cluster) or the heartbeat timeout.
func (g *gossiper) announceTombstone(name string, msg []byte) {
	g.announceDirect(name, outMsg{msg: wire.Direct(msg), repeat: true, late: true}, msg)
}

// announceDirect queues msg for gossip under name and hands direct to the
// outbox; what either refuses goes by push/pull instead (syncSoon).
func (g *gossiper) announceDirect(name string, direct outMsg, msg []byte) {
	queued := g.enqueue(g.queue, name, msg)
	if !g.queueDirect(direct) || !queued {
		g.syncSoon()
	}
}

// announceWait is announce for a burst the caller may wait on: the direct
// send waits for room in the outbox until ctx ends (then, or if the node
// stops, push/pull carries msg instead).
func (g *gossiper) announceWait(ctx context.Context, name string, msg []byte) {
	queued := g.enqueue(g.queue, name, msg)
	select {
	case g.outbox <- outMsg{msg: wire.Direct(msg), repeat: true}:
		if !queued {
			g.syncSoon()
		}
	case <-ctx.Done():
		g.syncSoon()
	case <-g.stopCh:
	}
}

// syncSoon asks syncLoop for push/pull exchanges with up to three random
// peers a moment from now (pullInterval), coalescing requests made
// meanwhile: a burst of announcements too large for gossip reaches those
// peers as one state transfer each, and the rest of the cluster by the
// pulls that heartbeats naming unknown instances trigger. It never blocks.
func (g *gossiper) syncSoon() {
	select {
	case g.syncKick <- struct{}{}:
	default: // one is pending already
	}
}

// syncLoop runs the exchanges syncSoon asks for, each after a pause that
// lets a burst of requests coalesce into one.
func (g *gossiper) syncLoop() {
	for {
		select {
		case <-g.stopCh:
			return
		case <-g.syncKick:
		}
		t := g.clk.NewTimer(pullInterval)
		select {
		case <-g.stopCh:
			t.Stop()
			return
		case <-t.C():
		}
		for _, p := range shuffledPeers(g.peerList()) {
			if _, err := g.ml.Join([]string{p.FullAddress().Addr}); err != nil {
				g.log.Debug("sync failed", "peer", p.Name, "err", err)
			}
		}
	}
}

// catchUp runs one more push/pull with a random member a moment after a
// join. The join's own exchange misses what is registered between it and
// the moment the rest of the cluster learns of this node (when they start
// sending to it directly); under a cold start of many nodes that gap would
// otherwise be closed only by the next heartbeat (5 s) or the periodic
// push/pull (30 s and more).
func (g *gossiper) catchUp() {
	t := g.clk.NewTimer(catchUpDelay + time.Duration(rand.Int64N(int64(catchUpDelay))))
	defer t.Stop()
	select {
	case <-g.stopCh:
		return
	case <-t.C():
	}
	g.pull("")
}

// catchUpDelay is the least wait before catchUp (up to twice that).
const catchUpDelay = time.Second

// requestPull schedules one push/pull exchange, at most once per
// pullInterval: a heartbeat for an instance this node has never heard of
// means a record broadcast passed it by. origin, the heartbeat's sender,
// surely has the record, so it is asked first.
func (g *gossiper) requestPull(origin string) {
	now := g.clk.Now().UnixNano()
	last := g.lastPull.Load()
	if now-last < int64(pullInterval) && now >= last || !g.lastPull.CompareAndSwap(last, now) {
		return
	}
	g.spawn(func() { g.pull(origin) })
}

// pullInterval limits pulls triggered by unknown heartbeats.
const pullInterval = 500 * time.Millisecond

// pull runs one push/pull state exchange (a memberlist Join with a current
// member): with the member named prefer if there is one, otherwise (or if
// that fails) with up to three random peers until one succeeds.
func (g *gossiper) pull(prefer string) {
	g.pulls.Add(1)
	g.peersMu.RLock()
	p := g.peers[prefer]
	g.peersMu.RUnlock()
	if p != nil {
		if _, err := g.ml.Join([]string{p.FullAddress().Addr}); err == nil {
			return
		}
	}
	for _, m := range shuffledPeers(g.peerList()) {
		_, err := g.ml.Join([]string{m.FullAddress().Addr})
		if err == nil {
			return
		}
		g.log.Debug("pull failed", "peer", m.Name, "err", err)
	}
}

// shuffledPeers shuffles peers in place and returns at most three of them.
func shuffledPeers(peers []*memberlist.Node) []*memberlist.Node {
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	return peers[:min(len(peers), 3)]
}

// waitQueueDrained waits until every queued record broadcast has been sent
// its full number of times (a few gossip rounds) or no other member is
// left to send them to, for at most limit or until ctx ends (then it
// returns ctx's error). memberlist's gossip rounds run on the wall clock,
// and limit comes from ctx's deadline, so this waits on the wall clock.
func (g *gossiper) waitQueueDrained(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	t := time.NewTicker(g.cfg.GossipInterval / 4)
	defer t.Stop()
	for g.queue.Len() > 0 && g.hasPeers() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// hasPeers reports whether another member is alive (or suspected), that
// is whom gossip goes to.
func (g *gossiper) hasPeers() bool {
	g.peersMu.RLock()
	defer g.peersMu.RUnlock()
	return len(g.peers) > 0
}

// leaveName is the broadcast queue name of node's leave notice.
func leaveName(node string) string { return "leave:" + node }

// announceLeave tells peers this node is leaving (wire.Leave): by gossip,
// and when direct is set also straight to every member. Sent before
// memberlist's leave message, it lets peers tell a graceful leave from a
// crash even when this node has no instances whose tombstones would say
// so.
func (g *gossiper) announceLeave(direct bool) {
	b, err := wire.Encode(&wire.Leave{Node: g.name, Addr: g.ml.LocalNode().Address(), Time: g.clk.Now().UnixNano()})
	if err != nil {
		g.log.Error("encode leave notice", "err", err)
		return
	}
	g.enqueue(g.queue, leaveName(g.name), b)
	if direct {
		g.sendDirectTwice(wire.Direct(b))
	}
}

// noteLeave takes a peer's leave notice and reports whether it is new.
// Only a notice from a live member at the address it gives counts (so a
// copy still gossiped after the node has gone cannot mark a node that
// later joins under its name); the mark is consumed when memberlist
// reports the node gone (see NotifyLeave).
func (g *gossiper) noteLeave(v *wire.Leave) bool {
	if v.Node == g.name {
		return false
	}
	g.peersMu.RLock()
	peer, ok := g.peers[v.Node]
	g.peersMu.RUnlock()
	if !ok || peer.Address() != v.Addr {
		return false
	}
	return g.reg.announcedLeave(v.Node)
}

// depart starts memberlist's leave and waits, within ctx, until its leave
// message has gone out. memberlist's Leave would wait for that itself, but
// it cannot be cancelled, and it waits out its whole timeout when the peers
// it could gossip to have left meanwhile (as when nodes leave at once). So
// it is given no time, and the leave notice is queued again instead: both
// ride the same gossip packets and are sent the same number of times
// (RetransmitMult × ⌈log10(N+1)⌉, memberlist's message first), so once the
// notice has gone out its full count, or no other member is left, so has
// memberlist's message. It returns ctx's error when ctx ends first.
func (g *gossiper) depart(ctx context.Context) error {
	_ = g.ml.Leave(time.Nanosecond) // its only error is that nanosecond passing
	g.announceLeave(false)
	return g.waitQueueDrained(ctx, time.Hour) // ctx bounds it
}

// sentBytes is the size of the messages in msgs.
func sentBytes(msgs [][]byte) int64 {
	var n int64
	for _, b := range msgs {
		n += int64(len(b))
	}
	return n
}
