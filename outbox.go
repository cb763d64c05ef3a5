// This file holds direct sends: messages the gossiper sends straight to
// members over UDP, off the caller's goroutine, with one delayed repeat.

package aegis

import (
	"math/rand/v2"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/aegisipc/aegis/internal/clock"
	"github.com/aegisipc/aegis/internal/wire"
)

// outMsg is a direct send for outboxLoop: msg to one node, or to every
// member when to is nil; introduce sends this node's records to a newcomer
// instead of msg.
type outMsg struct {
	to        *memberlist.Node
	msg       []byte
	introduce bool
	repeat    bool // send again after reannounceDelay (see sendDirectTwice)
	late      bool // and once more after lateRepeatDelay (see announceTombstone)
}

// delayed is an outMsg waiting in outboxLoop until due.
type delayed struct {
	due time.Time
	m   outMsg
}

// outboxSize bounds pending direct sends; beyond it they are dropped (gossip
// still carries the same messages).
const outboxSize = 1024

// introduceTombWindow and introduceTombMax bound the tombstones introduce
// sends: those stored in the last few push/pull intervals, at most a
// thousand (push/pull carries the rest).
const (
	introduceTombWindow = 2 * time.Minute
	introduceTombMax    = 1000
)

// reannounceDelay is the least wait before an announcement is repeated (up
// to twice that, with jitter).
const reannounceDelay = 150 * time.Millisecond

// lateRepeatDelay is the least wait before a tombstone's third send (up to
// 1.5 times that): past the burst that may have cost both earlier copies.
const lateRepeatDelay = 2 * time.Second

// sendDirectTwice sends msg straight to every member now and once more a
// moment later. A packet lost in a burst (a hundred nodes announcing at
// once overflow socket buffers) would otherwise wait for gossip or a pull;
// the repeat makes such a loss cost a few hundred milliseconds. Applying a message twice is harmless. It reports false
// when the outbox was full and msg was dropped.
func (g *gossiper) sendDirectTwice(msg []byte) bool {
	return g.queueDirect(outMsg{msg: msg, repeat: true})
}

// queueDirect hands m to outboxLoop, or drops it when the outbox is full
// (reporting false).
func (g *gossiper) queueDirect(m outMsg) bool {
	select {
	case g.outbox <- m:
		return true
	default:
		g.log.Debug("outbox full: direct send dropped")
		return false
	}
}

// outboxLoop performs direct sends off the caller's goroutine (memberlist
// callbacks must not block, and Register should not wait for N sends).
// Repeats wait here on timer (stopped, from the node's clock), which stops
// with the loop.
func (g *gossiper) outboxLoop(timer clock.Timer) {
	var later []delayed
	var next time.Time // when timer fires; zero while it is stopped
	defer timer.Stop()
	arm := func(due time.Time) {
		if next.IsZero() || due.Before(next) {
			next = due
			timer.Reset(due.Sub(g.clk.Now()))
		}
	}
	for {
		select {
		case <-g.stopCh:
			return
		case m := <-g.outbox:
			g.deliver(m)
			if m.repeat {
				due := g.clk.Now().Add(reannounceDelay + time.Duration(rand.Int64N(int64(reannounceDelay))))
				later = append(later, delayed{due: due, m: outMsg{to: m.to, msg: m.msg, late: m.late}})
				arm(due)
			}
		case <-timer.C():
			next = time.Time{}
			later = g.deliverDue(later, g.clk.Now())
			for _, d := range later {
				arm(d.due)
			}
		}
	}
}

// deliverDue sends the messages in later that are due at now and returns
// the rest, with the late repeats the sent ones ask for (each
// lateRepeatDelay from now, up to half of it more).
func (g *gossiper) deliverDue(later []delayed, now time.Time) []delayed {
	keep := later[:0]
	var again []delayed
	for _, d := range later {
		if d.due.After(now) {
			keep = append(keep, d)
			continue
		}
		g.deliver(d.m)
		if d.m.late {
			due := now.Add(lateRepeatDelay + time.Duration(rand.Int64N(int64(lateRepeatDelay/2))))
			again = append(again, delayed{due: due, m: outMsg{to: d.m.to, msg: d.m.msg}})
		}
	}
	clear(later[len(keep):])
	return append(keep, again...)
}

func (g *gossiper) deliver(m outMsg) {
	if m.introduce {
		g.introduce(m.to)
		return
	}
	targets := []*memberlist.Node{m.to}
	if m.to == nil {
		targets = g.peerList()
	}
	for _, t := range targets {
		if err := g.ml.SendBestEffort(t, m.msg); err != nil {
			g.log.Debug("direct send failed", "peer", t.Name, "err", err)
			continue
		}
		g.met.gossipBytes.Add(bg, int64(len(m.msg)), g.met.bytesOut...)
	}
}

// introduce sends every local record to a newcomer, and the tombstones of
// the instances this node deregistered lately (introduceTombWindow). A
// node can learn of a peer long after that peer joined (memberlist spreads
// joins by gossip, in seconds in a large cluster), and the peer may have
// learned of this node's instances meanwhile from others; a deregistration
// made in between was sent straight to the members this node knew then;
// relays (handleGossip) usually reach the newcomer, and these tombstones
// make sure, ahead of the next push/pull or the heartbeat timeout.
func (g *gossiper) introduce(to *memberlist.Node) {
	recs := append(g.reg.localRecords(), g.reg.localTombstones(g.clk.Now().Add(-introduceTombWindow), introduceTombMax)...)
	for i := range recs {
		b, err := wire.Encode(&recs[i])
		if err != nil {
			continue
		}
		msg := wire.Direct(b)
		if err := g.ml.SendBestEffort(to, msg); err != nil {
			g.log.Debug("introduce failed", "peer", to.Name, "err", err)
			return
		}
		g.met.gossipBytes.Add(bg, int64(len(msg)), g.met.bytesOut...)
	}
}
