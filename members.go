// This file holds the gossiper's view of other members: copies of the live
// peers' memberlist Nodes, and the failed nodes it keeps trying to rejoin.

package aegis

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// setPeer records a copy of node, called from a membership callback (under
// memberlist's lock), and returns it. The copy's fields, Addr's bytes
// included, are never written again: memberlist replaces them, it does not
// modify them.
func (g *gossiper) setPeer(node *memberlist.Node) *memberlist.Node {
	cp := *node
	g.peersMu.Lock()
	g.peers[node.Name] = &cp
	g.peersMu.Unlock()
	return &cp
}

// peerList returns the copies of the other live members' Nodes (never this
// node's own).
func (g *gossiper) peerList() []*memberlist.Node {
	g.peersMu.RLock()
	defer g.peersMu.RUnlock()
	out := make([]*memberlist.Node, 0, len(g.peers))
	for _, p := range g.peers {
		out = append(out, p)
	}
	return out
}

// nodeAt returns the name of the node whose call address is addr: a live
// member's (this node included), or else the node named by the instance
// records at addr (a node restarted on a new address is routed to before
// memberlist has accepted its new address); "" if none.
func (g *gossiper) nodeAt(addr string) string {
	if addr == g.callAddr {
		return g.name
	}
	g.peersMu.RLock()
	for name, p := range g.peers {
		if string(p.Meta) == addr {
			g.peersMu.RUnlock()
			return name
		}
	}
	g.peersMu.RUnlock()
	return g.reg.nodeAt(addr)
}

// MemberState is a node's state as this node's failure detector sees it.
type MemberState int

// Member states.
const (
	// MemberAlive: the node answers memberlist's probes.
	MemberAlive MemberState = iota
	// MemberFailed: memberlist declared the node dead; this node keeps
	// trying to rejoin it for Gossip.ReconnectTimeout.
	MemberFailed
)

// String returns "alive" or "failed".
func (s MemberState) String() string {
	switch s {
	case MemberAlive:
		return "alive"
	case MemberFailed:
		return "failed"
	}
	return fmt.Sprintf("member-state(%d)", int(s))
}

// Member is one node of the cluster as this node knows it.
type Member struct {
	// Name is the node's name (Config.NodeName).
	Name string
	// Addr is its gossip address, what Join takes.
	Addr string
	// CallAddr is the address its call listener is reached at ("" when not
	// known, for a failed node).
	CallAddr string
	// State is alive or failed.
	State MemberState
}

// Members returns this node and every other node it knows, alive or
// failed (a node that left gracefully is dropped), sorted by name.
func (n *Node) Members() []Member {
	g := n.gossip
	out := []Member{{Name: n.name, Addr: n.Addr(), CallAddr: g.callAddr, State: MemberAlive}}
	for _, p := range g.peerList() {
		out = append(out, Member{Name: p.Name, Addr: p.Address(), CallAddr: string(p.Meta), State: MemberAlive})
	}
	g.failed.mu.Lock()
	for name, f := range g.failed.m {
		out = append(out, Member{Name: name, Addr: f.addr, State: MemberFailed})
	}
	g.failed.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// member is a node and its call address.
type member struct{ name, callAddr string }

// members returns this node and every live peer with their call
// addresses, sorted by name.
func (g *gossiper) members() []member {
	g.peersMu.RLock()
	out := make([]member, 0, len(g.peers)+1)
	for name, p := range g.peers {
		out = append(out, member{name, string(p.Meta)})
	}
	g.peersMu.RUnlock()
	out = append(out, member{g.name, g.callAddr})
	slices.SortFunc(out, func(a, b member) int { return strings.Compare(a.name, b.name) })
	return out
}

// failedNodes are the nodes memberlist declared dead, with their gossip
// address and when (on the node's clock). Safe for concurrent use.
type failedNodes struct {
	mu sync.Mutex // guards m
	m  map[string]failedNode
}

type failedNode struct {
	addr  string
	since time.Time
}

func (f *failedNodes) add(name, addr string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[name] = failedNode{addr: addr, since: now}
}

func (f *failedNodes) remove(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, name)
}

// due forgets the nodes that failed more than timeout before now and
// returns the addresses of the others, sorted by name.
func (f *failedNodes) due(now time.Time, timeout time.Duration) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var addrs []string
	for _, name := range slices.Sorted(maps.Keys(f.m)) {
		if now.Sub(f.m[name].since) > timeout {
			delete(f.m, name)
			continue
		}
		addrs = append(addrs, f.m[name].addr)
	}
	return addrs
}

// reconnect rejoins one node memberlist declared dead; the gossiper calls
// it every Gossip.ReconnectInterval, as serf does: after a partition heals,
// the two sides would otherwise never gossip again once the dead-node
// gossip window has passed. Nodes are tried for Gossip.ReconnectTimeout
// after they failed.
func (g *gossiper) reconnect() {
	addrs := g.failed.due(g.clk.Now(), g.cfg.ReconnectTimeout)
	if len(addrs) == 0 {
		return
	}
	addr := addrs[rand.IntN(len(addrs))]
	g.stats.reconnects.Add(1)
	if _, err := g.ml.Join([]string{addr}); err != nil {
		g.log.Debug("reconnect failed", "addr", addr, "err", err)
	}
}
