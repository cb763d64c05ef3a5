// This file holds compact heartbeats (wire.Beats): the index by which a
// node's heartbeats name its instances, building a round's messages, and
// applying received ones.

package aegis

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/aegisipc/aegis/internal/wire"
)

// nodeIndex names an instance in compact heartbeats: its node and the
// index its record carries there.
type nodeIndex struct {
	node  string
	index uint32
}

// indexLocked files k under its record's compact-heartbeat index.
func (r *registry) indexLocked(k instKey, rec *wire.Record) {
	if rec.Index != 0 && !rec.Deleted {
		r.byIndex[nodeIndex{rec.Node, rec.Index}] = k
	}
}

// unindexLocked removes k's index entry when it is still k's.
func (r *registry) unindexLocked(k instKey, rec *wire.Record) {
	ni := nodeIndex{rec.Node, rec.Index}
	if rec.Index != 0 && r.byIndex[ni] == k {
		delete(r.byIndex, ni)
	}
}

// indexedLocked returns the entry of the instance node names index in its
// life, if this node has its record.
func (r *registry) indexedLocked(node string, life uint64, index uint32) (instKey, *entry, bool) {
	k, ok := r.byIndex[nodeIndex{node, index}]
	if !ok {
		return k, nil, false
	}
	e, ok := r.entries[k]
	if !ok || e.rec.Node != node || e.rec.Life != life || e.rec.Index != index {
		return k, nil, false
	}
	return k, e, true
}

// beatOutcome is what applying one compact heartbeat found.
type beatOutcome struct {
	fresh   int // beats that advanced an instance (worth passing on)
	unknown int // beats naming an instance whose record this node lacks
}

// beats applies a compact heartbeat message from another node.
func (r *registry) beats(b *wire.Beats) beatOutcome {
	var out beatOutcome
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	for _, hb := range b.Entries {
		_, e, ok := r.indexedLocked(b.Node, b.Life, hb.Index)
		switch {
		case !ok:
			out.unknown++
		case hb.Seq > e.rec.Seq:
			r.applyBeatLocked(e, hb.Seq, hb.Status, hb.Role, hb.Epoch, e.rec.Time, now)
			out.fresh++
		}
	}
	return out
}

// ownIndexed returns the local instances a compact heartbeat naming this
// node claims newer versions of, with the version claimed (the
// incarnation being this node's own): a forgery, to refute.
func (r *registry) ownIndexed(b *wire.Beats) (keys []instKey, incs []int64, seqs []uint64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, hb := range b.Entries {
		k, e, ok := r.indexedLocked(r.self, b.Life, hb.Index)
		if ok && hb.Seq > e.rec.Seq {
			keys, incs, seqs = append(keys, k), append(incs, e.rec.Incarnation), append(seqs, hb.Seq)
		}
	}
	return keys, incs, seqs
}

// applyCompact applies a received compact heartbeat message (encoded as
// b, frame included) and passes it on when anything in it was new here.
// One that names this node is a forgery or an echo: newer versions in it
// are refuted.
func (g *gossiper) applyCompact(msg *wire.Beats, b []byte, direct bool) {
	if msg.Node == g.name {
		keys, incs, seqs := g.reg.ownIndexed(msg)
		for i, k := range keys {
			g.defend(k, incs[i], seqs[i], nil)
		}
		return
	}
	out := g.reg.beats(msg)
	g.beats.keep(msg.Node, msg.Life, msg.Round, b, out.fresh > 0, g.clk.Now())
	if out.unknown == 0 {
		// Copies of it can be skipped unread from now on; not while it
		// names instances whose records have yet to arrive: a copy coming
		// after them must still count.
		g.recent.add(b[2:], g.clk.Now())
	}
	g.stats.heartbeatsReceived.Add(uint64(len(msg.Entries)))
	g.met.heartbeatsRecv.Add(bg, int64(len(msg.Entries)))
	if out.unknown > 0 {
		g.stats.heartbeatsUnknown.Add(uint64(out.unknown))
		g.missingRecords(msg.Node, msg.Life)
	}
	if out.fresh > 0 && !direct && g.hbGossip() {
		// Gossiped by a node with HeartbeatRetransmitMult set: passed on
		// when this node gossips heartbeats too (a queue with no
		// retransmits would keep it forever).
		g.enqueue(g.hbQueue, beatsName(msg.Node, msg.Entries), append([]byte(nil), b...))
	}
}

// beatsName names a compact heartbeat message in the broadcast queue: a
// newer one from the same node starting at the same index replaces it.
func beatsName(node string, entries []wire.Beat) string {
	first := uint32(0)
	if len(entries) > 0 {
		first = entries[0].Index
	}
	return "b:" + node + "/" + strconv.FormatUint(uint64(first), 10)
}

// compactMessages splits round's beats (any order) into compact messages
// of at most wire.MaxPackedPerMessage bytes of beats each and encodes them.
func (n *Node) compactMessages(beats []wire.Beat, round uint64) ([]*wire.Beats, [][]byte) {
	slices.SortFunc(beats, func(a, b wire.Beat) int { return cmp.Compare(a.Index, b.Index) })
	var msgs []*wire.Beats
	var encs [][]byte
	for len(beats) > 0 {
		packed, k := wire.PackBeatsLimit(beats, wire.MaxPackedPerMessage)
		m := &wire.Beats{Node: n.name, Life: n.life, Packed: packed, Entries: beats[:k], Round: round}
		beats = beats[k:]
		enc, err := wire.Encode(m)
		if err != nil {
			n.log.Error("encode heartbeats", "err", err)
			continue
		}
		msgs, encs = append(msgs, m), append(encs, enc)
	}
	return msgs, encs
}

// newLife returns a random non-zero life for a node.
func newLife() uint64 {
	for {
		if v := rand.Uint64(); v != 0 {
			return v
		}
	}
}

// newIndex returns the next instance index of this node's life; 0 (no
// compact heartbeats: the older form is used) once they run out.
func (n *Node) newIndex() uint32 {
	i := n.nextIndex.Add(1)
	if i == 0 || i > wire.MaxIndex {
		n.nextIndex.Store(wire.MaxIndex + 1)
		return 0
	}
	return i
}

// recentBodies remembers message bodies received lately, so that copies
// of a message already applied are dropped before they are decoded:
// applying one twice changes nothing. Compact heartbeats are remembered
// for as long as the generations hold them (gossip brings each about 8
// times when HeartbeatRetransmitMult is set; repair answers may come from
// two members). Records are remembered for a window only (recentRecordWindow):
// only those that changed the registry (a record refused now may be taken
// later), and not for long, since the same record may be needed again once
// its node has failed and come back; the delayed repeat of a direct send
// and gossiped copies arriving meanwhile were much of the work when
// hundreds of nodes registered at once. Two generations of at most max
// bodies each; when the newer fills, the older is forgotten.
type recentBodies struct {
	window   time.Duration // 0: no expiry
	mu       sync.Mutex
	cur, old map[string]time.Time
	max      int
}

func newRecentBodies(max int, window time.Duration) *recentBodies {
	return &recentBodies{window: window, cur: make(map[string]time.Time), old: make(map[string]time.Time), max: max}
}

// seen reports whether body was added lately (within the window of now).
func (r *recentBodies) seen(body []byte, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.cur[string(body)]
	if !ok {
		at, ok = r.old[string(body)]
	}
	return ok && (r.window == 0 || now.Sub(at) <= r.window)
}

// add remembers body as applied at now.
func (r *recentBodies) add(body []byte, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cur) >= r.max {
		r.old, r.cur = r.cur, make(map[string]time.Time, r.max)
	}
	r.cur[string(body)] = now
}

// recentRecordWindow is how long an applied record's copies are dropped
// unread: past the repeat of a direct send (reannounceDelay, up to twice
// it) with room for a loaded node.
const recentRecordWindow = 2 * time.Second

// recentMax bounds each generation of recentBodies: at 5,000 nodes
// beating every 5 s it spans about four seconds, far longer than the
// copies of one message take to arrive.
const recentMax = 4096
