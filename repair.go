// This file holds heartbeat repair: every node keeps the newest round of
// compact heartbeat messages it heard from each member, and a node that
// misses a member's round asks two other members for it (wire.Want).
//
// A node sends each round's compact heartbeats straight to every member,
// once (heartbeat.go). That is one copy per receiver, where epidemic
// gossip needs about eight for the same freshness (each receiver misses a
// gossiped message with a probability near e to the minus its copies).
// What a lost packet costs is made up here: a receiver that has heard
// nothing new from a member for 1.25 heartbeat intervals asks two random
// other members, which very likely heard that round, and asks again every
// tenth of an interval until it hears one, for up to three intervals
// (then the member is taken to have stopped beating: its instances are
// paused, deregistered or its node is gone, which the heartbeat timeout
// and memberlist judge). Asking others rather than the origin also routes
// around a path that fails one way only.

package aegis

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/aegisipc/aegis/internal/clock"
	"github.com/aegisipc/aegis/internal/wire"
)

// Repair timing, in heartbeat intervals: a member is late after
// repairLate, asked again every repairRetry, and given up on after
// repairGiveUp (until it is heard from again).
const (
	repairLateNum, repairLateDen = 5, 4 // 1.25 intervals
	repairRetryDiv               = 10   // a tenth of an interval
	repairGiveUp                 = 3    // intervals
	repairAsk                    = 2    // members asked at once
)

// Bounds on what repair stores and sends.
const (
	// maxRoundParts bounds the messages kept of one member's round: a node
	// with 10,000 instances sends about 40.
	maxRoundParts = 128
	// maxAnswerParts bounds the messages sent in answer to one Want.
	maxAnswerParts = 128
	// repairFramesPerSec bounds the messages this node sends per second in
	// answer to Wants, so that neither forged Wants nor a cluster-wide
	// burst of them (every node starved at once) make repair a traffic
	// source: at 10% loss a member of a 500-node cluster answers about 20
	// a second, of a 5,000-node one about 200.
	repairFramesPerSec = 1000
	// repairHoldMin and repairHoldDiv: when more than repairHoldMin members
	// and more than one in repairHoldDiv of them are newly late at once,
	// the cause is most likely this node (starved of CPU, its receive path
	// congested, or cut off) rather than lost packets, and asking would
	// only add load: the node holds its Wants that tick. Rounds keep
	// coming straight from every member, and the heartbeat timeout spans
	// six of them.
	repairHoldMin, repairHoldDiv = 4, 4
)

// originBeats is what a node keeps of one member's compact heartbeats.
type originBeats struct {
	life, round uint64
	msgs        [][]byte  // the frames of round, direct flag cleared
	fresh       time.Time // when a message of it last advanced an instance here
	asked       time.Time // when a Want last named it
}

// beatStore holds the newest round of compact heartbeats of every member
// this node heard from, itself included.
type beatStore struct {
	mu sync.Mutex
	m  map[string]*originBeats

	answered perSecond // messages sent in answer (repairFramesPerSec)
}

// perSecond counts what was done in the current second of a clock; its
// owner's lock guards it.
type perSecond struct {
	start time.Time
	n     int
}

// room returns how many more fit limit in the second at now, starting a
// new second when now has left the current one.
func (p *perSecond) room(now time.Time, limit int) int {
	if now.Sub(p.start) >= time.Second || now.Before(p.start) {
		p.start, p.n = now, 0
	}
	return limit - p.n
}

func newBeatStore() *beatStore {
	return &beatStore{m: make(map[string]*originBeats)}
}

// keep stores frame, a compact heartbeat message from node (life, round)
// that was applied here; fresh says it advanced an instance. A message of
// an unknown life, or of a newer round, is kept only when fresh: its
// records are known and it was news. It replaces the older round's
// messages; another part of the same round is added to them.
func (s *beatStore) keep(node string, life, round uint64, frame []byte, fresh bool, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.m[node]
	switch {
	case o == nil || o.life != life || round > o.round:
		if !fresh {
			return
		}
		if o == nil {
			o = &originBeats{}
			s.m[node] = o
		}
		o.life, o.round, o.msgs = life, round, [][]byte{undirect(frame)}
	case round == o.round:
		if len(o.msgs) < maxRoundParts && !slices.ContainsFunc(o.msgs, func(m []byte) bool { return bytes.Equal(m[1:], frame[1:]) }) {
			o.msgs = append(o.msgs, undirect(frame))
		}
	}
	if fresh {
		o.fresh = now
	}
}

// expect notes that node, in its life life, has an instance that sends
// compact heartbeats (its record arrived at now), so that heartbeats
// never heard from it are asked for too.
func (s *beatStore) expect(node string, life uint64, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o := s.m[node]; o == nil || o.life != life {
		s.m[node] = &originBeats{life: life, fresh: now}
	}
}

// forget drops what is kept of node (it left or failed).
func (s *beatStore) forget(node string) {
	s.mu.Lock()
	delete(s.m, node)
	s.mu.Unlock()
}

// late returns the members to ask about at now: heard from last more than
// late ago but less than giveUp ago, not asked within retry, live
// (live(node)) and not self. It marks them asked, and drops what it keeps
// of nodes not live and not heard from for giveUp.
func (s *beatStore) late(self string, live func(string) bool, now time.Time, late, retry, giveUp time.Duration) []wire.WantOrigin {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []wire.WantOrigin
	for node, o := range s.m {
		if node == self {
			continue
		}
		since := now.Sub(o.fresh)
		// The ticker fires every retry, give or take: a tenth of slack
		// keeps a member from being skipped at every other tick.
		if since <= late || now.Sub(o.asked) < retry-retry/10 {
			continue
		}
		if !live(node) {
			if since >= giveUp {
				delete(s.m, node) // gone, or named by records only
			}
			continue
		}
		if since >= giveUp {
			continue
		}
		o.asked = now
		out = append(out, wire.WantOrigin{Node: node, Life: o.life, Round: o.round})
	}
	return out
}

// answer returns the messages to send for w, at most maxAnswerParts: of
// every origin named, the newest round kept when the asker's life differs
// or its round is older. Answers stop at repairFramesPerSec messages in the
// current second: then it returns what still fits, and limited once none
// does.
func (s *beatStore) answer(w *wire.Want, now time.Time) (msgs [][]byte, limited bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	budget := min(maxAnswerParts, s.answered.room(now, repairFramesPerSec))
	if budget <= 0 {
		return nil, true
	}
	defer func() { s.answered.n += len(msgs) }()
	for _, want := range w.Origins {
		o := s.m[want.Node]
		if o == nil || (o.life == want.Life && o.round <= want.Round) {
			continue
		}
		for _, m := range o.msgs {
			if len(msgs) >= budget {
				return msgs, false
			}
			msgs = append(msgs, m)
		}
	}
	return msgs, false
}

// repairRetry is the time between two Wants about one member.
func repairRetry(interval time.Duration) time.Duration {
	return max(interval/repairRetryDiv, time.Millisecond)
}

// undirect returns a copy of frame without the direct flag.
func undirect(frame []byte) []byte {
	cp := append([]byte(nil), frame...)
	if len(cp) > 1 {
		cp[1] &^= wire.FlagDirect
	}
	return cp
}

// repairLoop asks for missed heartbeats at every tick of t (a tenth of a
// heartbeat interval, on the node's clock).
func (g *gossiper) repairLoop(t clock.Ticker) {
	interval := g.hbInterval
	retry := repairRetry(interval)
	defer t.Stop()
	for {
		select {
		case <-g.stopCh:
			return
		case <-t.C():
		}
		g.askLate(interval*repairLateNum/repairLateDen, retry, repairGiveUp*interval)
	}
}

// askLate sends a Want for every late member (see beatStore.late), in
// batches of wire.MaxWantOrigins, each to repairAsk random members other
// than the ones it names (the ones it names only when too few others are
// left).
func (g *gossiper) askLate(late, retry, giveUp time.Duration) {
	live := func(node string) bool {
		g.peersMu.RLock()
		defer g.peersMu.RUnlock()
		return g.peers[node] != nil
	}
	origins := g.beats.late(g.name, live, g.clk.Now(), late, retry, giveUp)
	if len(origins) == 0 {
		return
	}
	g.peersMu.RLock()
	if members := len(g.peers); holdRepair(len(origins), members) {
		g.peersMu.RUnlock()
		g.warn.Warn("repair-hold", "heartbeats of many members late at once: repair held (this node may be starved of CPU or cut off)",
			"late", len(origins), "members", members)
		return
	}
	peers := make(map[string]*memberlist.Node, len(g.peers))
	for name, p := range g.peers {
		peers[name] = p
	}
	g.peersMu.RUnlock()
	for len(origins) > 0 {
		k := min(len(origins), wire.MaxWantOrigins)
		batch := origins[:k]
		origins = origins[k:]
		msg, err := wire.Encode(&wire.Want{From: g.name, Origins: batch})
		if err != nil {
			g.log.Error("encode heartbeat want", "err", err)
			continue
		}
		for _, p := range wantTargets(peers, batch) {
			g.queueDirect(outMsg{to: p, msg: wire.Direct(msg)})
			g.stats.heartbeatWants.Add(1)
		}
	}
}

// holdRepair reports whether a node that finds late members late of its
// members alive should hold its Wants (see repairHoldMin).
func holdRepair(late, members int) bool {
	return late > repairHoldMin && late > members/repairHoldDiv
}

// wantTargets picks repairAsk members to ask about origins: random members
// not among them, topped up with origins when too few others exist.
func wantTargets(peers map[string]*memberlist.Node, origins []wire.WantOrigin) []*memberlist.Node {
	named := make(map[string]bool, len(origins))
	for _, o := range origins {
		named[o.Node] = true
	}
	var others, fallback []*memberlist.Node
	for name, p := range peers {
		if named[name] {
			fallback = append(fallback, p)
		} else {
			others = append(others, p)
		}
	}
	pick := func(from []*memberlist.Node, n int) []*memberlist.Node {
		rand.Shuffle(len(from), func(i, j int) { from[i], from[j] = from[j], from[i] })
		return from[:min(n, len(from))]
	}
	out := pick(others, repairAsk)
	return append(out, pick(fallback, repairAsk-len(out))...)
}

// answerWant sends the asker of w, a live member, the newest heartbeats
// kept of the members it names.
func (g *gossiper) answerWant(w *wire.Want) {
	g.peersMu.RLock()
	to := g.peers[w.From]
	g.peersMu.RUnlock()
	if to == nil {
		return // not a live member: nowhere to answer
	}
	for _, o := range w.Origins {
		if o.Node == g.name {
			// Asked for this node's own records (see missingRecords).
			if g.recAsks.serve(w.From, g.clk.Now()) {
				g.queueDirect(outMsg{to: to, introduce: true})
			}
			break
		}
	}
	msgs, limited := g.beats.answer(w, g.clk.Now())
	if limited {
		g.warn.Warn("want-limit", "heartbeat wants refused: repair answers reached their limit a second", "limit", repairFramesPerSec)
		return
	}
	for _, m := range msgs {
		g.queueDirect(outMsg{to: to, msg: wire.Direct(m)})
		g.stats.heartbeatRepairs.Add(1)
	}
}

// Asking a node for its own records. A compact heartbeat names instances
// by their index; a receiver without the record of one (its direct send
// still queued somewhere, or lost) used to run a full push/pull at once:
// every record of the cluster, N×I of them, both ways. In a burst of
// registrations at 500 nodes those pulls outweighed all other work. Now the
// receiver first asks the heartbeat's sender, which surely has the record,
// for its own records only: a Want naming the very node it is sent to. The
// full pull follows only when that node's heartbeats still name an unknown
// instance a while after asking.

// Record asks: wait recordAskWait after asking before a full pull; forget
// an ask after recordAskForget (the next unknown instance asks again);
// answer one asker at most once per recordServeEvery, and at most
// recordServesPerSec askers a second in all.
const (
	recordAskWait      = time.Second
	recordAskForget    = 10 * time.Second
	recordServeEvery   = time.Second
	recordServesPerSec = 50
	maxRecordAsks      = 4096 // origins and askers remembered, each
)

// askStep is what missingRecords does next about one origin.
type askStep int

const (
	askOrigin askStep = iota // ask the origin for its records
	askWait                  // asked a moment ago: wait for the answer
	askPull                  // asked and still missing: pull the full state
)

// recordAsks remembers the record asks this node made and answered.
type recordAsks struct {
	mu     sync.Mutex
	asked  map[string]time.Time // origin → when its records were last asked for
	served map[string]time.Time // asker → when it was last sent this node's records

	serves perSecond // askers sent this node's records (recordServesPerSec)
}

func newRecordAsks() *recordAsks {
	return &recordAsks{asked: make(map[string]time.Time), served: make(map[string]time.Time)}
}

// next decides what to do about origin's unknown instances at now.
func (a *recordAsks) next(origin string, now time.Time) askStep {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.asked[origin]
	since := now.Sub(at)
	switch {
	case ok && since >= 0 && since < recordAskWait:
		return askWait
	case ok && since >= 0 && since < recordAskForget:
		a.asked[origin] = now // pull now; ask again if still missing a while later
		return askPull
	}
	if !ok && len(a.asked) >= maxRecordAsks {
		pruneBefore(a.asked, now.Add(-recordAskForget))
		if len(a.asked) >= maxRecordAsks {
			return askPull // remembers too many origins: the pull's own limit applies
		}
	}
	a.asked[origin] = now
	return askOrigin
}

// serve reports whether asker may be sent this node's records at now.
func (a *recordAsks) serve(asker string, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if at, ok := a.served[asker]; ok && now.Sub(at) < recordServeEvery && !now.Before(at) {
		return false
	}
	if a.serves.room(now, recordServesPerSec) <= 0 {
		return false
	}
	if len(a.served) >= maxRecordAsks {
		pruneBefore(a.served, now.Add(-recordServeEvery))
		if len(a.served) >= maxRecordAsks {
			return false
		}
	}
	a.serves.n++
	a.served[asker] = now
	return true
}

// forget drops what is remembered about node (it left or failed).
func (a *recordAsks) forget(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.asked, node)
	delete(a.served, node)
}

// pruneBefore deletes the entries of m older than t.
func pruneBefore(m map[string]time.Time, t time.Time) {
	for k, at := range m {
		if at.Before(t) {
			delete(m, k)
		}
	}
}

// missingRecords handles a compact heartbeat from origin (life) naming
// instances this node has no record of.
func (g *gossiper) missingRecords(origin string, life uint64) {
	switch g.recAsks.next(origin, g.clk.Now()) {
	case askWait:
	case askPull:
		g.requestPull(origin)
	case askOrigin:
		g.peersMu.RLock()
		to := g.peers[origin]
		g.peersMu.RUnlock()
		if to == nil {
			g.requestPull(origin)
			return
		}
		msg, err := wire.Encode(&wire.Want{From: g.name, Origins: []wire.WantOrigin{{Node: origin, Life: life}}})
		if err != nil {
			g.log.Error("encode record ask", "err", err)
			return
		}
		if g.queueDirect(outMsg{to: to, msg: wire.Direct(msg)}) {
			g.stats.heartbeatWants.Add(1)
		}
	}
}
