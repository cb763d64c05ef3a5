package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/transport"
)

// countingTransport wraps a node's transport and counts what it sends:
// gossip UDP packets, and the bytes of the gossip TCP streams it dials
// (both directions, so every stream is counted once, at its dialer).
type countingTransport struct {
	transport.Transport
	udpBytes, udpPackets atomic.Uint64
	tcpOut, tcpIn        atomic.Uint64 // on streams this node dialed
	tcpDials             atomic.Uint64
}

// GossipAddr forwards the optional method Node uses to learn the bound
// gossip address.
func (t *countingTransport) GossipAddr() string {
	if g, ok := t.Transport.(interface{ GossipAddr() string }); ok {
		return g.GossipAddr()
	}
	return ""
}

func (t *countingTransport) countPacket(b []byte, err error) {
	if err == nil {
		t.udpBytes.Add(uint64(len(b)))
		t.udpPackets.Add(1)
	}
}

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	ts, err := t.Transport.WriteTo(b, addr)
	t.countPacket(b, err)
	return ts, err
}

func (t *countingTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	ts, err := t.Transport.WriteToAddress(b, addr)
	t.countPacket(b, err)
	return ts, err
}

func (t *countingTransport) wrap(c net.Conn, err error) (net.Conn, error) {
	if err != nil {
		return nil, err
	}
	t.tcpDials.Add(1)
	return &countingConn{Conn: c, t: t}, nil
}

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.wrap(t.Transport.DialTimeout(addr, timeout))
}

func (t *countingTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.wrap(t.Transport.DialAddressTimeout(addr, timeout))
}

type countingConn struct {
	net.Conn
	t *countingTransport
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.t.tcpOut.Add(uint64(n))
	return n, err
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.t.tcpIn.Add(uint64(n))
	return n, err
}

type costSnap struct {
	at                   time.Time
	udpBytes, udpPackets uint64
	tcpBytes, tcpDials   uint64
	user, sys            time.Duration
	stats                aegis.Stats
}

func (c *cluster) costSnap() costSnap {
	var s costSnap
	for _, t := range c.counters {
		s.udpBytes += t.udpBytes.Load()
		s.udpPackets += t.udpPackets.Load()
		s.tcpBytes += t.tcpOut.Load() + t.tcpIn.Load()
		s.tcpDials += t.tcpDials.Load()
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		s.user = time.Duration(ru.Utime.Nano())
		s.sys = time.Duration(ru.Stime.Nano())
	}
	s.stats = sumStats(c.nodes)
	s.at = time.Now()
	return s
}

func runCost(args []string) error {
	fs := flag.NewFlagSet("cost", flag.ContinueOnError)
	var opt common
	opt.register(fs)
	n := fs.Int("n", 50, "nodes")
	per := fs.Int("instances", 5, "instances registered on each node")
	dur := fs.Duration("duration", 30*time.Second, "measurement window")
	warm := fs.Duration("warm", 5*time.Second, "extra wait after -settle before the window, so registration gossip has drained")
	winProf := fs.String("window-cpuprofile", "", "write a CPU profile of the measurement window alone to this file")
	claims := fs.Int("claims", 0, "resource claims made (spread over one extra instance per node) before the window, to measure what ownership costs at rest")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := opt.validate(); err != nil {
		return err
	}
	if *n < 2 || *per < 0 || *dur <= 0 {
		return fmt.Errorf("need -n >= 2, -instances >= 0, positive -duration")
	}
	ctx := context.Background()
	progress("cost N=%d, %d instances per node, window %v", *n, *per, *dur)
	c := newCluster(&opt, *n, true)
	defer c.shutdown()
	started := time.Now()
	if err := c.startAll(ctx, nil); err != nil {
		return err
	}
	if *per > 0 {
		if err := c.registerEach(ctx, "svc", *per); err != nil {
			return err
		}
	} else {
		time.Sleep(opt.settle)
	}
	if *claims > 0 {
		if err := claimSpread(ctx, c, *claims); err != nil {
			return err
		}
	}
	c.startLoss()
	progress("  warm %v, then measuring %v", *warm, *dur)
	time.Sleep(*warm)
	stopWin, err := startWindowProfile(*winProf)
	if err != nil {
		return err
	}
	a := c.costSnap()
	time.Sleep(*dur)
	b := c.costSnap()
	stopWin()

	secs := b.at.Sub(a.at).Seconds()
	perNode := func(x float64) float64 { return x / secs / float64(*n) }
	cpu := (b.user + b.sys) - (a.user + a.sys)
	g := opt.gossipConfig()
	pp := g.PushPullInterval
	if *n > 32 { // memberlist stretches push/pull in larger clusters
		pp = time.Duration(float64(pp) * (ceilLog2Ratio(*n) + 1))
	}
	def := aegis.DefaultConfig()
	header("cost", &opt,
		fmt.Sprintf("procedure: start %d nodes, join them, register %d instances of service \"svc\" on each (%d in all), wait until every node sees all of them, sleep -settle %v and -warm %v; then measure for %v", *n, *per, *n**per, opt.settle, *warm, roundD(b.at.Sub(a.at))),
		"each node's transport is created by this program and wrapped in a counter: UDP = payload bytes of every gossip packet sent (WriteTo/WriteToAddress); TCP = payload bytes both ways on the gossip streams a node dials (DialTimeout/DialAddressTimeout: push/pull, joins), i.e. every stream counted once; IP/UDP/TCP headers not included",
		"CPU = process user+system time (getrusage) over the window, divided by nodes and seconds: it includes the Go runtime (GC) and this program, which sleeps during the window",
		fmt.Sprintf("resource claims: %d, spread evenly over one extra instance (service \"owners\") per node, made and converged on every node before -warm", *claims),
		fmt.Sprintf("heartbeats: every instance heartbeats every %v, so %d instances × N / %v = %.1f heartbeats/s originate cluster-wide", def.HeartbeatInterval, *per, def.HeartbeatInterval, float64(*n**per)/def.HeartbeatInterval.Seconds()),
		fmt.Sprintf("push/pull: memberlist runs a node's first periodic push/pull a random 0..%v plus one interval after it starts, then every %v at this N (PushPullInterval, scaled above 32 nodes); the window ran from %v to %v after the nodes started, so it holds %s; pulls Aegis triggers itself and joins are counted whenever they fall in the window; use -warm to move the window later",
			g.PushPullInterval, pp, roundD(a.at.Sub(started)), roundD(b.at.Sub(started)), ppNote(a.at.Sub(started), b.at.Sub(started), g.PushPullInterval, pp)),
	)
	rows := [][]string{
		{"UDP bytes/s per node", fmt.Sprintf("%.0f", perNode(float64(b.udpBytes-a.udpBytes))), "about 85"},
		{"UDP packets/s per node", fmt.Sprintf("%.1f", perNode(float64(b.udpPackets-a.udpPackets))), ""},
		{"TCP bytes/s per node", fmt.Sprintf("%.0f", perNode(float64(b.tcpBytes-a.tcpBytes))), ""},
		{"TCP streams dialed/s per node", fmt.Sprintf("%.3f", perNode(float64(b.tcpDials-a.tcpDials))), ""},
		{"CPU ms/s per node (user+sys)", fmt.Sprintf("%.3f", perNode(float64(cpu)/float64(time.Millisecond))), "about 0.6"},
		{"  of which user", fmt.Sprintf("%.3f", perNode(float64(b.user-a.user)/float64(time.Millisecond))), ""},
		{"  of which sys", fmt.Sprintf("%.3f", perNode(float64(b.sys-a.sys)/float64(time.Millisecond))), ""},
		{"GossipReceived/s per node", fmt.Sprintf("%.1f", perNode(float64(b.stats.GossipReceived-a.stats.GossipReceived))), ""},
		{"HeartbeatsSent/s per node", fmt.Sprintf("%.2f", perNode(float64(b.stats.HeartbeatsSent-a.stats.HeartbeatsSent))), ""},
		{"HeartbeatsReceived/s per node", fmt.Sprintf("%.1f", perNode(float64(b.stats.HeartbeatsReceived-a.stats.HeartbeatsReceived))), ""},
		{"HeartbeatsUnknown/s per node", fmt.Sprintf("%.2f", perNode(float64(b.stats.HeartbeatsUnknown-a.stats.HeartbeatsUnknown))), ""},
		{"HeartbeatWants/s per node (requests for missed heartbeats)", fmt.Sprintf("%.2f", perNode(float64(b.stats.HeartbeatWants-a.stats.HeartbeatWants))), ""},
		{"HeartbeatRepairs/s per node (messages sent in answer)", fmt.Sprintf("%.2f", perNode(float64(b.stats.HeartbeatRepairs-a.stats.HeartbeatRepairs))), ""},
		{"TCP streams dialed since start (all nodes, incl. joins)", fmt.Sprintf("%d (%d bytes)", b.tcpDials, b.tcpBytes), ""},
		{"GossipDropped in window (all nodes)", fmt.Sprintf("%d", b.stats.GossipDropped-a.stats.GossipDropped), ""},
	}
	table([]string{"per node per second", "aegis (this run)", "plain memberlist idle, reference measured earlier on this machine"}, rows)
	return nil
}

// claimSpread registers an "owners" instance on every node, has them claim
// total resources between them, and waits until every node knows every
// owner.
func claimSpread(ctx context.Context, c *cluster, total int) error {
	n := len(c.nodes)
	var names []string
	for i := range c.nodes {
		r, err := c.register(ctx, i, "owners", fmt.Sprintf("owner-%d", i))
		if err != nil {
			return err
		}
		var mine []string
		for j := i; j < total; j += n {
			mine = append(mine, fmt.Sprintf("resource-%d", j))
		}
		if err := r.Claim(ctx, mine...); err != nil {
			return fmt.Errorf("node %d: claim: %w", i, err)
		}
		names = append(names, mine...)
	}
	t0 := time.Now()
	for _, nd := range c.nodes {
		for _, res := range names {
			for {
				if _, ok := nd.Owner(res); ok {
					break
				}
				if time.Since(t0) > c.opt.cap {
					return fmt.Errorf("node %s does not know the owner of %s after %v", nd.Name(), res, c.opt.cap)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	progress("  %d claims known on all %d nodes after %v", total, n, roundD(time.Since(t0)))
	return nil
}

// ceilLog2Ratio is ceil(log2(n) - log2(32)), memberlist's push/pull scale.
func ceilLog2Ratio(n int) float64 {
	k := 0.0
	for x := 32; x < n; x *= 2 {
		k++
	}
	return k
}

// ppNote says how many periodic push/pulls per node fall, on average, in a
// window [from, to] after start: memberlist waits a uniform 0..base stagger,
// then ticks every period.
func ppNote(from, to, base, period time.Duration) string {
	// Expected number of ticks stagger+k*period (k >= 1) inside the window,
	// averaged over the stagger.
	const steps = 1000
	total := 0.0
	for i := range steps {
		st := time.Duration(float64(base) * (float64(i) + 0.5) / steps)
		for t := st + period; t <= to; t += period {
			if t >= from {
				total++
			}
		}
	}
	e := total / steps
	if e == 0 {
		return "no periodic push/pull (the TCP figure leaves that cost out)"
	}
	return fmt.Sprintf("on average %.2f periodic push/pulls per node", e)
}

// startWindowProfile starts a CPU profile into path (none when path is
// empty) and returns the function that ends it.
func startWindowProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
