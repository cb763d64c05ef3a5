// This file holds the node's counters (Stats). Its OpenTelemetry
// instruments are in telemetry.go.

package aegis

import (
	"sync/atomic"

	"github.com/aegisipc/aegis/internal/rpc"
)

// Stats are counters of one Node since it started.
type Stats struct {
	// GossipReceived counts decoded gossip messages and push/pull states.
	GossipReceived uint64
	// GossipDropped counts gossip messages dropped as malformed, truncated,
	// of an unknown version or type.
	GossipDropped uint64
	// HeartbeatsSent counts heartbeats this node originated.
	HeartbeatsSent uint64
	// HeartbeatsReceived counts heartbeats received (fresh or not); an
	// exact copy of a compact heartbeat message received lately is skipped
	// unread and not counted.
	HeartbeatsReceived uint64
	// HeartbeatsUnknown counts heartbeats for instances not yet known here.
	HeartbeatsUnknown uint64
	// DuplicatesAnswered counts calls to local instances answered from the
	// dedup cache (or from the still-running first execution) instead of
	// running the handler again.
	DuplicatesAnswered uint64
	// SameInstanceRetries counts retries this node made on the same
	// instance with the same message ID.
	SameInstanceRetries uint64
	// DedupEvictions counts dedup entries of local instances dropped by the
	// window or the bound.
	DedupEvictions uint64
	// Reconnects counts attempts to rejoin a node memberlist declared dead
	// (one per Gossip.ReconnectInterval while any is known).
	Reconnects uint64
	// Refutations counts foreign records, tombstones or heartbeats about
	// this node's own instances that it refuted with a newer version.
	Refutations uint64
	// RecordsRefused counts received records and tombstones dropped by
	// MaxInstancesPerNode or MaxInstances.
	RecordsRefused uint64
	// TLSRefused counts call connections refused in the TLS handshake
	// (no certificate, another key or CA, a timeout).
	TLSRefused uint64
	// Hedges counts hedged attempts this node sent (see Config.HedgeDelay);
	// HedgesWon how many of them answered first.
	Hedges, HedgesWon uint64
	// BroadcastsRefused counts messages the broadcast queues refused: too
	// big for a gossip packet, or the queue full (direct sends and
	// push/pull still carry the state).
	BroadcastsRefused uint64
	// HeartbeatWants counts requests this node sent for compact heartbeats
	// it missed (to two members per late member; see
	// Config.HeartbeatInterval), HeartbeatRepairs the heartbeat messages it
	// sent in answer to such requests.
	HeartbeatWants, HeartbeatRepairs uint64
	// Calls are the call listener's counters.
	Calls CallStats
}

// CallStats are the call listener's counters: Conns (connections served
// now), Accepted, RefusedMaxConns and RefusedMaxConnsPerIP (closed on
// arrival by CallLimits), ClosedIdle and ClosedFrameTimeout (closed by
// CallLimits' timeouts), MalformedFrames (closed for breaking the
// protocol), OversizedFrames (requests over MaxFrameSize, answered with an
// error), InflightPauses (reading paused at MaxInflightPerConn),
// WriteStalls (answers waiting on a peer that reads too slowly) and
// HandlerPanics.
type CallStats = rpc.ServerStats

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		GossipReceived:      n.stats.gossipReceived.Load(),
		GossipDropped:       n.stats.gossipDropped.Load(),
		HeartbeatsSent:      n.stats.heartbeatsSent.Load(),
		HeartbeatsReceived:  n.stats.heartbeatsReceived.Load(),
		HeartbeatsUnknown:   n.stats.heartbeatsUnknown.Load(),
		DuplicatesAnswered:  n.stats.duplicates.Load(),
		SameInstanceRetries: n.stats.sameRetries.Load(),
		DedupEvictions:      n.stats.dedupEvictions.Load(),
		Reconnects:          n.stats.reconnects.Load(),
		Refutations:         n.stats.refutations.Load(),
		RecordsRefused:      n.reg.refusedRecords(),
		TLSRefused:          n.stats.tlsRefused.Load(),
		BroadcastsRefused:   n.stats.broadcastsRefused.Load(),
		Hedges:              n.stats.hedges.Load(),
		HeartbeatWants:      n.stats.heartbeatWants.Load(),
		HeartbeatRepairs:    n.stats.heartbeatRepairs.Load(),
		HedgesWon:           n.stats.hedgesWon.Load(),
		Calls:               n.server.rpc.Stats(),
	}
}

// dedupEvicted counts one dedup entry evicted from a local instance's cache.
func (n *Node) dedupEvicted() {
	n.stats.dedupEvictions.Add(1)
	n.met.dedupEvictions.Add(bg, 1)
}

type nodeStats struct {
	gossipReceived, gossipDropped                          atomic.Uint64
	heartbeatsSent, heartbeatsReceived, heartbeatsUnknown  atomic.Uint64
	duplicates, sameRetries, dedupEvictions                atomic.Uint64
	reconnects, refutations, tlsRefused, broadcastsRefused atomic.Uint64
	hedges, hedgesWon                                      atomic.Uint64
	heartbeatWants, heartbeatRepairs                       atomic.Uint64
}
