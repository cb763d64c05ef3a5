// Package transport carries Aegis traffic between nodes: memberlist's gossip
// packets and streams, plus the stream connections used for direct calls.
//
// Two implementations ship with the package: NewNet, the real network (UDP and
// TCP gossip on one port, TCP calls on a second one), and Network, an
// in-memory network for tests with partitions, loss and latency injection.
package transport

import (
	"context"
	"net"

	"github.com/hashicorp/memberlist"
)

// Transport is what a Node needs from the network.
//
// The gossip half is memberlist's NodeAwareTransport; memberlist owns it once
// the node starts and calls its Shutdown when the node stops. Shutdown must
// also close the call listener, unblock every pending Accept, DialCall and
// read on streams it created, and be safe to call more than once.
//
// All methods must be safe for concurrent use.
type Transport interface {
	memberlist.NodeAwareTransport

	// DialCall opens a stream to the call listener of the peer whose
	// CallAddr is addr. It returns when the stream is established, ctx ends,
	// or the peer is known to be unreachable (refused, shut down).
	DialCall(ctx context.Context, addr string) (net.Conn, error)
	// CallListener returns the listener on which peers' DialCall streams
	// arrive. It is the same value on every call.
	CallListener() net.Listener
	// CallAddr is the "host:port" peers pass to DialCall to reach this
	// transport's CallListener.
	CallAddr() string
}
