// This file holds the Server's limits: effective options, connection caps, in-flight gate, counters.

package rpc

import (
	"math"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// serverLimits are a Server's options made effective: defaults filled in,
// 0 meaning no limit.
type serverLimits struct {
	maxFrame      int
	frameTimeout  time.Duration
	idleTimeout   time.Duration
	maxConns      int
	maxConnsPerIP int
	maxInflight   int32
}

func (o *ServerOptions) limits() serverLimits {
	inflight := orDefault(o.MaxInflightPerConn, DefaultMaxInflightPerConn)
	if inflight == 0 || inflight > math.MaxInt32 {
		inflight = math.MaxInt32
	}
	return serverLimits{
		maxFrame:      normMaxFrame(o.MaxFrameSize),
		frameTimeout:  orDefault(o.FrameTimeout, DefaultFrameTimeout),
		idleTimeout:   orDefault(o.IdleTimeout, DefaultIdleTimeout),
		maxConns:      orDefault(o.MaxConns, DefaultMaxConns),
		maxConnsPerIP: orDefault(o.MaxConnsPerIP, DefaultMaxConnsPerIP),
		maxInflight:   int32(inflight),
	}
}

// orDefault makes an option effective: 0 is def, a negative value is 0 (no
// limit), anything else stays.
func orDefault[T int | time.Duration](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// connTable holds a Server's live connections and counts them per remote
// IP. Its methods are called with Server.mu held.
type connTable struct {
	all   map[*serverConn]struct{}
	perIP map[netip.Addr]int
}

// refusal names the cap a connection is refused by ("" for none).
type refusal string

const (
	refusedMaxConns      refusal = "MaxConns"
	refusedMaxConnsPerIP refusal = "MaxConnsPerIP"
)

// refuseLocked says which cap, if any, one more connection from ip (the
// zero Addr for connections without one) would exceed.
func (t *connTable) refuseLocked(lim *serverLimits, ip netip.Addr) refusal {
	switch {
	case lim.maxConns > 0 && len(t.all) >= lim.maxConns:
		return refusedMaxConns
	case lim.maxConnsPerIP > 0 && ip.IsValid() && t.perIP[ip] >= lim.maxConnsPerIP:
		return refusedMaxConnsPerIP
	}
	return ""
}

func (t *connTable) addLocked(sc *serverConn) {
	t.all[sc] = struct{}{}
	if sc.ip.IsValid() {
		t.perIP[sc.ip]++
	}
}

func (t *connTable) removeLocked(sc *serverConn) {
	delete(t.all, sc)
	if !sc.ip.IsValid() {
		return
	}
	if n := t.perIP[sc.ip] - 1; n > 0 {
		t.perIP[sc.ip] = n
	} else {
		delete(t.perIP, sc.ip)
	}
}

// remoteIP returns the IP address conn comes from, or the zero Addr if it
// has none (an in-memory or Unix socket connection).
func remoteIP(conn net.Conn) netip.Addr {
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// inflightGate counts a connection's requests in flight (read and not yet
// answered) and holds its reader back at the cap until one is answered.
type inflightGate struct {
	n       atomic.Int32
	max     int32
	waiting atomic.Bool   // the reader waits (or is about to) on room
	room    chan struct{} // capacity 1: wakes the waiting reader
}

func newInflightGate(max int32) inflightGate {
	return inflightGate{max: max, room: make(chan struct{}, 1)}
}

func (g *inflightGate) add()       { g.n.Add(1) }
func (g *inflightGate) busy() bool { return g.n.Load() > 0 }
func (g *inflightGate) full() bool { return g.n.Load() >= g.max }

// done counts one request answered, wakes the reader if it waits for room,
// and reports whether other requests are still in flight.
func (g *inflightGate) done() (busy bool) {
	n := g.n.Add(-1)
	if n < g.max && g.waiting.Load() && g.waiting.CompareAndSwap(true, false) {
		select {
		case g.room <- struct{}{}:
		default:
		}
	}
	return n > 0
}

// wait returns once fewer than max requests are in flight, or stop is
// closed. Only the goroutine holding the reader role calls it.
func (g *inflightGate) wait(stop <-chan struct{}) {
	for g.full() {
		// Announce the wait, then look again: done either sees the
		// announcement or has already made room (atomics are sequentially
		// consistent).
		g.waiting.Store(true)
		if !g.full() {
			g.waiting.Store(false)
			return
		}
		select {
		case <-g.room:
		case <-stop:
			g.waiting.Store(false)
			return
		}
	}
}

// ServerStats is a snapshot of a Server's counters. Conns is the current
// number of connections; every other field counts events since NewServer.
type ServerStats struct {
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
	// ones too slowly (1 MiB of answers was waiting to be written).
	WriteStalls uint64
	// HandlerPanics counts handler panics (answered with CodePanic).
	HandlerPanics uint64
}

// serverCounters are the counters behind ServerStats, and handoffs: the
// reader roles the monitor took from handlers found still running.
type serverCounters struct {
	accepted, refusedMaxConns, refusedMaxConnsPerIP   atomic.Uint64
	closedIdle, closedFrameTimeout, malformed         atomic.Uint64
	oversized, inflightPauses, writeStalls, panicking atomic.Uint64
	handoffs                                          atomic.Uint64
}

func (c *serverCounters) snapshot(conns int) ServerStats {
	return ServerStats{
		Conns:                conns,
		Accepted:             c.accepted.Load(),
		RefusedMaxConns:      c.refusedMaxConns.Load(),
		RefusedMaxConnsPerIP: c.refusedMaxConnsPerIP.Load(),
		ClosedIdle:           c.closedIdle.Load(),
		ClosedFrameTimeout:   c.closedFrameTimeout.Load(),
		MalformedFrames:      c.malformed.Load(),
		OversizedFrames:      c.oversized.Load(),
		InflightPauses:       c.inflightPauses.Load(),
		WriteStalls:          c.writeStalls.Load(),
		HandlerPanics:        c.panicking.Load(),
	}
}
