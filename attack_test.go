package aegis

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/internal/wire"
)

// userMsg is memberlist's message type for a delegate's message: what a
// process that never joined puts before its payload to reach NotifyMsg of
// a cluster without SecretKey.
const userMsg = 8

// attacker sends forged gossip to every node of a cluster on loopback:
// as raw UDP packets from a process that never joined, or, with a key,
// through a member holding it.
type attacker struct {
	c      *cluster
	member *Node // nil: a non-member
}

func (a *attacker) send(t *testing.T, msg []byte, to ...*Node) {
	t.Helper()
	if to == nil {
		to = a.c.nodes
	}
	for _, nd := range to {
		if a.member == nil {
			conn, err := net.Dial("udp", nd.Addr())
			require.NoError(t, err)
			_, err = conn.Write(append([]byte{userMsg}, msg...))
			require.NoError(t, err)
			_ = conn.Close()
			continue
		}
		if nd == a.member {
			nd.gossip.handleGossip(msg)
			continue
		}
		require.NoError(t, a.member.gossip.ml.SendBestEffort(nd.gossip.ml.LocalNode(), msg))
	}
}

func encode(t *testing.T, v any) []byte {
	t.Helper()
	b, err := wire.Encode(v)
	require.NoError(t, err)
	return b
}

// ownRecord returns the owner's current record of an instance.
func ownRecord(nd *Node, k instKey) wire.Record {
	nd.reg.mu.RLock()
	defer nd.reg.mu.RUnlock()
	return nd.reg.entries[k].rec
}

// refutationBound is how long the tests give an owner to correct every
// node: its refutation goes straight to every member (one UDP round trip on
// a LAN) and by gossip after that.
const refutationBound = 5 * time.Second

// TestForgedStateIsRefuted replays, against three nodes on real loopback
// sockets, a forged tombstone (at the next version, and blind, far ahead),
// a forged heartbeat at the largest sequence number with status unhealthy
// (in the older batch and in the compact form),
// and a forged record at the next incarnation carrying the attacker's
// address; from a process that never joined a cluster without a key, and
// from a member holding the key. After each, every node soon sees the
// instance healthy at its owner's address again, and calls to it succeed.
func TestForgedStateIsRefuted(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		t.Run(map[bool]string{false: "non-member", true: "member-with-key"}[keyed], func(t *testing.T) {
			opts := []clusterOpt{overTCP}
			if keyed {
				opts = append(opts, withKey(NewSecretKey()))
			}
			c := newCluster(t, 3, false, opts...)
			c.waitConverged(10 * time.Second)
			for i, nd := range c.nodes {
				c.register(nd, Service{Name: "target", InstanceID: fmt.Sprintf("t-%d", i), Handler: func(ctx context.Context, req *Request) ([]byte, error) {
					return []byte(req.InstanceID + "@" + nd.Name()), nil
				}}, i+1)
			}
			a := &attacker{c: c}
			if keyed {
				a.member = c.nodes[2]
			}
			owner, k := c.nodes[1], instKey{"target", "t-1"}
			ownAddr := owner.tr.CallAddr()
			forgeries := map[string]func(rec wire.Record) any{
				"tombstone": func(rec wire.Record) any {
					return &wire.Record{Service: k.service, ID: k.id, Node: rec.Node, Incarnation: rec.Incarnation, Seq: rec.Seq + 1000, Deleted: true}
				},
				"blind tombstone far ahead": func(rec wire.Record) any {
					return &wire.Record{Service: k.service, ID: k.id, Node: "intruder", Deleted: true,
						Incarnation: owner.clk.Now().Add(maxIncarnationLead - time.Hour).UnixNano(), Seq: wire.MaxSeq}
				},
				"max-sequence heartbeat": func(rec wire.Record) any {
					return &wire.HeartbeatBatch{Node: rec.Node, Beats: []wire.Heartbeat{{Service: k.service, ID: k.id,
						Incarnation: rec.Incarnation, Seq: wire.MaxSeq, Status: uint8(StatusUnhealthy)}}}
				},
				"max-sequence compact heartbeat": func(rec wire.Record) any {
					return &wire.Beats{Node: rec.Node, Life: rec.Life, Packed: wire.PackBeats([]wire.Beat{
						{Index: rec.Index, Seq: wire.MaxSeq, Status: uint8(StatusUnhealthy)}})}
				},
				"address record": func(rec wire.Record) any {
					f := rec
					f.Addr, f.Incarnation, f.Seq = "127.0.0.1:9", rec.Incarnation+1, 0
					return &f
				},
			}
			seen := subscribeLog(c.nodes[0])
			for _, name := range []string{"tombstone", "blind tombstone far ahead", "max-sequence heartbeat", "max-sequence compact heartbeat", "address record"} {
				refutations := owner.Stats().Refutations
				events := seen.count("t-1")
				forged := encode(t, forgeries[name](ownRecord(owner, k)))
				// The others first, so that the forgery surely lands on
				// node-00 before the owner hears of it.
				a.send(t, forged, c.nodes[0], c.nodes[2])
				testutil.Eventually(t, refutationBound, func() bool { return seen.count("t-1") > events || owner.Stats().Refutations > refutations },
					"%s: node-00 took the forgery", name)
				a.send(t, forged, owner)
				testutil.Eventually(t, refutationBound, func() bool { return owner.Stats().Refutations > refutations },
					"%s: the owner refutes it", name)
				for _, nd := range c.nodes {
					testutil.Eventually(t, refutationBound, func() bool {
						for _, in := range nd.HealthyInstances("target") {
							if in.ID == "t-1" {
								return in.Addr == ownAddr && in.Node == owner.Name()
							}
						}
						return false
					}, "%s: t-1 healthy at its owner's address on %s again", name, nd.Name())
				}
				for i := 0; i < 200; i++ {
					out, err := c.nodes[0].Call(context.Background(), "target", "x", nil)
					require.NoError(t, err, "%s: call %d after the refutation", name, i)
					id, node, _ := strings.Cut(string(out), "@")
					require.Equal(t, "node-0"+id[len("t-"):], node, "%s: %s answered from its own node", name, id)
				}
			}
		})
	}
}

// TestOversizedGossipIsDropped sends 2,000 forged 58 KB gossip packets to
// a node on loopback: they are dropped and counted, the heap does not grow
// with them, and nothing is left in the broadcast queues.
func TestOversizedGossipIsDropped(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		t.Run(map[bool]string{false: "non-member", true: "member-with-key"}[keyed], func(t *testing.T) {
			opts := []clusterOpt{overTCP}
			if keyed {
				opts = append(opts, withKey(NewSecretKey()))
			}
			c := newCluster(t, 2, false, opts...)
			c.waitConverged(10 * time.Second)
			victim := c.nodes[0]
			a := &attacker{c: &cluster{nodes: []*Node{victim}}}
			if keyed {
				a.member = c.nodes[1]
			}
			heap := func() uint64 {
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				return ms.HeapAlloc
			}
			before, dropped := heap(), victim.Stats().GossipDropped
			const packets = 2000
			for i := 0; i < packets; i++ {
				big := &wire.Record{Service: "bloat", ID: fmt.Sprintf("b-%d", i), Node: "intruder", Addr: "127.0.0.1:9",
					Incarnation: 1, Meta: map[string]string{"pad": strings.Repeat("x", 58<<10)}}
				a.send(t, encode(t, big))
				if i%50 == 49 { // let the receiver keep up rather than overflow its socket buffer
					testutil.Eventually(t, 5*time.Second, func() bool { return victim.Stats().GossipDropped-dropped >= uint64(i+1)*9/10 }, "packets arrive")
				}
			}
			testutil.Eventually(t, 10*time.Second, func() bool { return victim.Stats().GossipDropped-dropped >= packets*9/10 }, "most packets counted as dropped")
			growth := int64(heap()) - int64(before)
			t.Logf("%d packets dropped; heap growth %d KB", victim.Stats().GossipDropped-dropped, growth>>10)
			require.Less(t, growth, int64(20<<20), "heap growth")
			require.Empty(t, victim.Services()[:0])
			require.NotContains(t, victim.Services(), "bloat")
			testutil.Eventually(t, 10*time.Second, func() bool { return victim.gossip.queue.Len() == 0 }, "record queue drains")
		})
	}
}

// count returns how many events concern instance id.
func (l *eventLog) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.evs {
		if e.Instance.ID == id {
			n++
		}
	}
	return n
}
