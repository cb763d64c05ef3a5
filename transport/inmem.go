// This file holds Network, the in-memory network for tests: it routes
// packets and streams between MemTransports and injects partitions, loss and
// latency.

package transport

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Wildcard matches any address in SetLoss; "" means the same.
const Wildcard = "*"

// Port range handed out as the local port of dialed in-memory streams.
const (
	ephemeralFirst = 49152
	ephemeralCount = 65536 - ephemeralFirst
)

// Network is an in-memory network connecting MemTransports, for tests. It
// behaves like a LAN where packets may be lost and streams are reliable, and
// can be told to partition nodes, lose packets and add latency. The zero
// value is not usable; call NewNetwork. All methods are safe for concurrent
// use.
//
// Nodes are named by their gossip address, the "ip:port" given to
// NewTransport. Each node's call address is the same IP with port+1 (see
// MemTransport.CallAddr). Gossip addresses and call addresses are separate
// namespaces, so nodes may use consecutive ports.
type Network struct {
	mu      sync.RWMutex
	gossip  map[string]*MemTransport // by gossip address
	calls   map[string]*MemTransport // by call address
	cuts    map[link]struct{}
	loss    map[link]float64
	latency time.Duration

	ephemeral atomic.Uint32

	respLoss atomic.Uint64 // math.Float64bits of the SetResponseLoss probability
}

// SetResponseLoss makes each write on the serving side of a call stream
// (DialCall), with probability p, reset the connection instead of
// delivering: the request reached the handler but its response is lost, and
// the caller sees the connection reset. Use it to test delivery guarantees
// (same-instance retries, deduplication). 0 turns it off; Heal does too.
func (n *Network) SetResponseLoss(p float64) {
	if p < 0 || p > 1 {
		panic(fmt.Sprintf("transport: response loss %v outside [0, 1]", p))
	}
	n.respLoss.Store(math.Float64bits(p))
}

func (n *Network) loseResponse() bool {
	p := math.Float64frombits(n.respLoss.Load())
	return p > 0 && rand.Float64() < p
}

// link is a one-way path between two gossip addresses; either may be
// Wildcard in loss rules.
type link struct{ from, to string }

// NewNetwork returns an empty network without partitions, loss or latency.
func NewNetwork() *Network {
	return &Network{
		gossip: make(map[string]*MemTransport),
		calls:  make(map[string]*MemTransport),
		cuts:   make(map[link]struct{}),
		loss:   make(map[link]float64),
	}
}

// NewTransport attaches a node with gossip address addr ("ip:port", port
// 1..65534, for example "127.0.0.11:7946") and returns its Transport, a
// *MemTransport. Its call address is the same IP with port+1.
//
// It panics if addr is malformed or already used by a transport that has not
// been shut down. After Shutdown the address is free again, which models a
// node restart.
func (n *Network) NewTransport(addr string) Transport {
	return n.NewMemTransport(addr)
}

// NewMemTransport is NewTransport returning the concrete type, which has a
// few extra methods for tests.
func (n *Network) NewMemTransport(addr string) *MemTransport {
	ap, err := parseAddr(addr)
	if err != nil {
		panic(fmt.Sprintf("transport: NewTransport(%q): %v", addr, err))
	}
	if ap.Port() == 0 || ap.Port() == 65535 {
		panic(fmt.Sprintf("transport: NewTransport(%q): port must be in 1..65534", addr))
	}
	t := newMemTransport(n, ap)

	n.mu.Lock()
	_, used := n.gossip[t.gossipAddr]
	if !used {
		n.gossip[t.gossipAddr] = t
		n.calls[t.callAddr] = t
	}
	n.mu.Unlock()
	if used {
		panic(fmt.Sprintf("transport: NewTransport(%q): address already in use", addr))
	}
	t.start()
	return t
}

// Partition cuts every member of a off from every member of b, in both
// directions: packets between them are dropped, new streams between them
// cannot be established (dials block until their timeout, like a
// blackholed network) and bytes written on established streams between them
// vanish without an error. Addresses are gossip addresses; Partition panics
// on a malformed one. Partitions add up until Heal.
func (n *Network) Partition(a, b []string) {
	as, bs := mustCanon(a), mustCanon(b)
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, x := range as {
		for _, y := range bs {
			n.cuts[link{x, y}] = struct{}{}
			n.cuts[link{y, x}] = struct{}{}
		}
	}
}

// Heal removes every partition and every loss rule. Latency stays. Bytes
// written on streams while they were partitioned stay lost.
func (n *Network) Heal() {
	n.respLoss.Store(0)
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.cuts)
	clear(n.loss)
}

// SetLoss sets the probability p (clamped to 0..1) that a packet sent from
// the gossip address from to the gossip address to is dropped. Either
// address may be "" or "*" to match any node. When several rules match, the
// most specific wins: from+to, then from+any, then any+to, then any+any; so
// a rule with p = 0 can exempt a link from a wider one. It panics on a
// malformed address.
//
// The same probability applies to dialing a stream (gossip or call) along
// that link: a lost dial is blackholed and blocks until its timeout or
// context ends, as when a connection's first packets are lost. Established
// streams are reliable and are not affected.
func (n *Network) SetLoss(from, to string, p float64) {
	l := link{canonOrWildcard(from), canonOrWildcard(to)}
	if !(p > 0) { // also catches NaN
		p = 0
	}
	p = min(p, 1)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.loss[l] = p
}

// SetLatency sets the one-way delay added to every packet and to every
// chunk written on a stream from now on. A packet or chunk reaches its
// receiver no earlier than its send time plus d. Delivery stays in send
// order per receiver for packets and per direction for streams. Negative d
// means 0. Establishing a stream takes no time.
func (n *Network) SetLatency(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.latency = max(d, 0)
}

// remove detaches t, if it is still the transport registered at its
// addresses.
func (n *Network) remove(t *MemTransport) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.gossip[t.gossipAddr] == t {
		delete(n.gossip, t.gossipAddr)
	}
	if n.calls[t.callAddr] == t {
		delete(n.calls, t.callAddr)
	}
}

// route decides the fate of traffic from one node to another: whether it is
// dropped (partition, or loss when lossy) and the latency to add. The lossy
// flag is false for bytes on established streams.
func (n *Network) route(from, to string, lossy bool) (drop bool, latency time.Duration) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.droppedLocked(from, to, lossy), n.latency
}

// droppedLocked reports whether traffic from->to is dropped. n.mu is held.
func (n *Network) droppedLocked(from, to string, lossy bool) bool {
	if from == to {
		return false
	}
	if _, cut := n.cuts[link{from, to}]; cut {
		return true
	}
	if !lossy || len(n.loss) == 0 {
		return false
	}
	for _, l := range [...]link{{from, to}, {from, Wildcard}, {Wildcard, to}, {Wildcard, Wildcard}} {
		if p, ok := n.loss[l]; ok {
			return p > 0 && rand.Float64() < p
		}
	}
	return false
}

// nextEphemeral returns a local port for a dialed stream.
func (n *Network) nextEphemeral() int {
	return ephemeralFirst + int(n.ephemeral.Add(1)%ephemeralCount)
}

// parseAddr parses an "ip:port" into canonical form (IPv4-mapped IPv6
// addresses become IPv4).
func parseAddr(addr string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// mustCanon canonicalises gossip addresses, panicking on a malformed one.
func mustCanon(addrs []string) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		ap, err := parseAddr(a)
		if err != nil {
			panic(fmt.Sprintf("transport: bad address %q: %v", a, err))
		}
		out[i] = ap.String()
	}
	return out
}

// canonOrWildcard canonicalises a SetLoss address, panicking on a malformed
// one.
func canonOrWildcard(addr string) string {
	if addr == "" || addr == Wildcard {
		return Wildcard
	}
	return mustCanon([]string{addr})[0]
}
