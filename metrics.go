// This file holds the node's counters (Stats) and its OpenTelemetry
// instruments.

package aegis

import (
	"sync/atomic"

	"github.com/aegisipc/aegis/internal/rpc"

	"go.opentelemetry.io/otel/metric"
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
	// HeartbeatsReceived counts heartbeats received (fresh or not).
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
	// Calls are the call listener's counters.
	Calls CallStats
}

// CallStats are the call listener's counters: connections served and
// refused by CallLimits, closed for idleness or a stalled frame,
// malformed and oversized frames, handler panics.
type CallStats struct {
	// Conns is the number of connections being served.
	Conns int
	// Accepted counts connections taken into service.
	Accepted uint64
	// RefusedMaxConns and RefusedMaxConnsPerIP count connections closed on
	// arrival because they would have exceeded MaxConns or MaxConnsPerIP.
	RefusedMaxConns      uint64
	RefusedMaxConnsPerIP uint64
	// ClosedIdle counts connections closed after IdleTimeout without
	// requests.
	ClosedIdle uint64
	// ClosedFrameTimeout counts connections closed because a frame did not
	// arrive whole within FrameTimeout.
	ClosedFrameTimeout uint64
	// MalformedFrames counts connections closed because the peer broke the
	// protocol: a bad length, version or kind, or a request that did not
	// decode.
	MalformedFrames uint64
	// OversizedFrames counts requests over MaxFrameSize, read past and
	// answered with CodeFrameTooLarge.
	OversizedFrames uint64
	// InflightPauses counts the times a connection stopped reading because
	// MaxInflightPerConn of its requests were in flight.
	InflightPauses uint64
	// WriteStalls counts answers that waited because the peer read earlier
	// ones too slowly (too many answer bytes were waiting to be written).
	WriteStalls uint64
	// HandlerPanics counts handler panics (answered with CodePanic).
	HandlerPanics uint64
}

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
		HedgesWon:           n.stats.hedgesWon.Load(),
		Calls:               callStats(n.server.rpc.Stats()),
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
}

// nodeMetrics are the OpenTelemetry instruments of a Node.
type nodeMetrics struct {
	gossipDropped  metric.Int64Counter
	heartbeatsSent metric.Int64Counter
	duplicates     metric.Int64Counter
	sameRetries    metric.Int64Counter
	dedupEvictions metric.Int64Counter
	hedges         metric.Int64Counter
}

func newNodeMetrics(mp metric.MeterProvider) *nodeMetrics {
	m := mp.Meter("github.com/aegisipc/aegis")
	// Instrument creation only fails on invalid names; ours are constant.
	gd, _ := m.Int64Counter("aegis.gossip.dropped", metric.WithDescription("gossip messages dropped as malformed or of an unknown version"))
	hs, _ := m.Int64Counter("aegis.heartbeat.sent", metric.WithDescription("heartbeats originated by this node"))
	du, _ := m.Int64Counter("aegis.call.duplicates", metric.WithDescription("calls answered from the dedup cache instead of running the handler again"))
	sr, _ := m.Int64Counter("aegis.call.same_instance_retries", metric.WithDescription("retries on the same instance with the same message ID"))
	de, _ := m.Int64Counter("aegis.call.dedup_evictions", metric.WithDescription("dedup entries evicted by the window or the bound"))
	he, _ := m.Int64Counter("aegis.call.hedges", metric.WithDescription("hedged attempts sent to a second instance"))
	return &nodeMetrics{gossipDropped: gd, heartbeatsSent: hs, duplicates: du, sameRetries: sr, dedupEvictions: de, hedges: he}
}

func callStats(st rpc.ServerStats) CallStats {
	return CallStats{
		Conns:                st.Conns,
		Accepted:             st.Accepted,
		RefusedMaxConns:      st.RefusedMaxConns,
		RefusedMaxConnsPerIP: st.RefusedMaxConnsPerIP,
		ClosedIdle:           st.ClosedIdle,
		ClosedFrameTimeout:   st.ClosedFrameTimeout,
		MalformedFrames:      st.MalformedFrames,
		OversizedFrames:      st.OversizedFrames,
		InflightPauses:       st.InflightPauses,
		WriteStalls:          st.WriteStalls,
		HandlerPanics:        st.HandlerPanics,
	}
}
