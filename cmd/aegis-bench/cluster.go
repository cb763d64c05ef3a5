package main

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/transport"
)

// common holds the flags every subcommand shares.
type common struct {
	gossip   string        // "lan" or "local"
	mem      bool          // in-memory network instead of loopback
	cap      time.Duration // give up waiting for convergence after this
	settle   time.Duration // extra quiet time after the cluster converged
	seeds    int           // how many nodes each node joins
	hbMult   int           // GossipConfig.HeartbeatRetransmitMult; 0: the profile's
	suspMult int           // GossipConfig.SuspicionMult; 0: the profile's
	probeInt time.Duration // GossipConfig.ProbeInterval; 0: the profile's
	probeTO  time.Duration // GossipConfig.ProbeTimeout; 0: the profile's
	loss     float64       // packet loss on every link of the in-memory network

	cpuprofile string // write a CPU profile of the run here
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.gossip, "gossip", "lan", "gossip profile: lan (the shipped DefaultConfig().Gossip = aegis.LANGossip()), fast (aegis.FastLANGossip()) or local (aegis.LocalGossip())")
	fs.BoolVar(&c.mem, "mem", false, "use the in-memory network (transport.NewNetwork) instead of real UDP/TCP on 127.0.0.1")
	fs.DurationVar(&c.cap, "cap", 60*time.Second, "give up waiting for any convergence after this long (the run is reported as failed)")
	fs.DurationVar(&c.settle, "settle", 2*time.Second, "quiet time after the cluster has converged, before a measurement starts")
	fs.Float64Var(&c.loss, "loss", 0, "with -mem: probability that a packet on any link is lost (transport.Network.SetLoss), once every instance has been seen everywhere (freshness, cost)")
	fs.IntVar(&c.hbMult, "hbmult", 0, "override GossipConfig.HeartbeatRetransmitMult (0: the profile's own)")
	fs.IntVar(&c.suspMult, "suspicion-mult", 0, "override GossipConfig.SuspicionMult (0: the profile's own); hundreds of in-process nodes share this machine's cores, and a burst that starves them all for seconds makes memberlist declare live nodes dead, which no real cluster of separate hosts would see")
	fs.DurationVar(&c.probeInt, "probe-interval", 0, "override GossipConfig.ProbeInterval (0: the profile's own); see -suspicion-mult")
	fs.DurationVar(&c.probeTO, "probe-timeout", 0, "override GossipConfig.ProbeTimeout (0: the profile's own); see -suspicion-mult")
	fs.IntVar(&c.seeds, "seeds", 1, "nodes each new node joins: node 0, plus seeds-1 random earlier nodes")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
}

func (c *common) validate() error {
	switch c.gossip {
	case "lan", "fast", "local":
	default:
		return fmt.Errorf("-gossip must be lan, fast or local, got %q", c.gossip)
	}
	if c.seeds < 1 {
		return fmt.Errorf("-seeds must be at least 1")
	}
	if c.suspMult < 0 || c.hbMult < 0 || c.probeInt < 0 || c.probeTO < 0 {
		return fmt.Errorf("-suspicion-mult, -hbmult, -probe-interval and -probe-timeout must not be negative")
	}
	if c.cap <= 0 {
		return fmt.Errorf("-cap must be positive")
	}
	if c.loss < 0 || c.loss >= 1 || c.loss > 0 && !c.mem {
		return fmt.Errorf("-loss must be in [0, 1) and needs -mem")
	}
	if c.cpuprofile != "" {
		f, err := os.Create(c.cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return err
		}
		stopProfile = func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}
	}
	return nil
}

// stopProfile ends the CPU profile started by -cpuprofile, if any; main
// calls it when the subcommand returns.
var stopProfile = func() {}

func (c *common) gossipConfig() aegis.GossipConfig {
	g := aegis.DefaultConfig().Gossip
	switch c.gossip {
	case "local":
		g = aegis.LocalGossip()
	case "fast":
		g = aegis.FastLANGossip()
	}
	if c.hbMult > 0 {
		g.HeartbeatRetransmitMult = c.hbMult
	}
	if c.suspMult > 0 {
		g.SuspicionMult = c.suspMult
	}
	if c.probeInt > 0 {
		g.ProbeInterval = c.probeInt
	}
	if c.probeTO > 0 {
		g.ProbeTimeout = c.probeTO
	}
	return g
}

func (c *common) gossipName() string {
	switch c.gossip {
	case "local":
		return "aegis.LocalGossip()"
	case "fast":
		return "aegis.FastLANGossip()"
	}
	return "DefaultConfig().Gossip (shipped default, aegis.LANGossip())"
}

func (c *common) networkName() string {
	if c.mem {
		if c.loss > 0 {
			return fmt.Sprintf("in-memory (transport.NewNetwork, one network per run, %.0f%% loss on every link once the instances are registered and seen everywhere, no latency)", 100*c.loss)
		}
		return "in-memory (transport.NewNetwork, one network per run, no loss or latency)"
	}
	return "real UDP+TCP on 127.0.0.1 loopback, ports picked free (cfg.BindAddr = \"127.0.0.1:0\")"
}

// joinName describes how nodes join.
func (c *common) joinName() string {
	if c.seeds == 1 {
		return "each node joins node 0"
	}
	return fmt.Sprintf("each node joins node 0 plus %d random earlier nodes", c.seeds-1)
}

// instKey names one instance.
type instKey struct{ svc, id string }

// badMark is when and why a node first saw an instance turn unhealthy.
type badMark struct {
	at     time.Time
	reason string
}

// view follows one node's events: which instances it knows, and when it
// first learned of each (event times, taken by the node when it applied
// the change, so subscriber latency does not count).
type view struct {
	mu      sync.Mutex
	count   map[string]int // live instances per service
	live    map[instKey]bool
	seenAt  map[instKey]time.Time // first EventRegistered
	badAt   map[instKey]badMark   // first change to StatusUnhealthy
	goneAt  map[instKey]string    // deregistration reasons
	nevents int
}

// newView returns a view sized for about size instances (growing its maps
// while hundreds of nodes register at once cost the measured phase CPU).
func newView(size int) *view {
	return &view{
		count:  make(map[string]int),
		live:   make(map[instKey]bool, size),
		seenAt: make(map[instKey]time.Time, size),
		badAt:  make(map[instKey]badMark),
		goneAt: make(map[instKey]string),
	}
}

func (v *view) onEvent(ev aegis.Event) {
	k := instKey{ev.Instance.Service, ev.Instance.ID}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.nevents++
	switch ev.Type {
	case aegis.EventRegistered:
		if !v.live[k] {
			v.live[k] = true
			v.count[k.svc]++
		}
		if _, ok := v.seenAt[k]; !ok {
			v.seenAt[k] = ev.Time
		}
		if ev.NewStatus == aegis.StatusUnhealthy {
			if _, ok := v.badAt[k]; !ok {
				v.badAt[k] = badMark{ev.Time, "registered-unhealthy"}
			}
		}
	case aegis.EventDeregistered:
		if v.live[k] {
			delete(v.live, k)
			v.count[k.svc]--
		}
		v.goneAt[k] = ev.Reason
	case aegis.EventStatusChanged:
		if ev.NewStatus == aegis.StatusUnhealthy {
			if _, ok := v.badAt[k]; !ok {
				v.badAt[k] = badMark{ev.Time, ev.Reason}
			}
		}
	}
}

func (v *view) countOf(svc string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.count[svc]
}

func (v *view) seen(k instKey) (time.Time, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	t, ok := v.seenAt[k]
	return t, ok
}

func (v *view) bad(k instKey) (badMark, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	b, ok := v.badAt[k]
	return b, ok
}

// cluster is one set of nodes in this process.
type cluster struct {
	opt   *common
	tag   string // random, keeps node names unique across runs
	nw    *transport.Network
	count bool // wrap transports in countingTransport

	nodes     []*aegis.Node
	views     []*view
	counters  []*countingTransport
	mems      []*transport.MemTransport // with -mem: each node's transport
	regs      sync.Map                  // instKey → *aegis.Registration, from register
	logs      *logCounter               // when set, counts every node's warnings
	pace      float64                   // pacer limit for setup steps (scale)
	stopWatch func()                    // ends watch (scale); set once every node exists
}

// newCluster prepares a cluster of n node slots; nodes start with start or
// startAll.
func newCluster(opt *common, n int, count bool) *cluster {
	c := &cluster{
		opt:       opt,
		tag:       randomHex(3),
		count:     count,
		nodes:     make([]*aegis.Node, n),
		views:     make([]*view, n),
		counters:  make([]*countingTransport, n),
		mems:      make([]*transport.MemTransport, n),
		stopWatch: func() {},
	}
	for i := range c.views {
		c.views[i] = newView(4 * n)
	}
	if opt.mem {
		c.nw = transport.NewNetwork()
	}
	return c
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

func nopHandler(ctx context.Context, req *aegis.Request) ([]byte, error) { return nil, nil }

// start creates node i and subscribes to its events. It is safe to call for
// different i concurrently.
func (c *cluster) start(i int, tweak func(*aegis.Config)) error {
	cfg := aegis.DefaultConfig()
	cfg.NodeName = fmt.Sprintf("n%03d-%s", i, c.tag)
	cfg.Gossip = c.opt.gossipConfig()
	var tr transport.Transport
	if c.opt.mem {
		mt := c.nw.NewMemTransport(fmt.Sprintf("10.0.%d.%d:7946", i/250, i%250+1))
		c.mems[i] = mt
		tr = mt
	} else if c.count {
		nt, err := transport.NewNet(transport.NetConfig{BindAddr: "127.0.0.1:0"})
		if err != nil {
			return fmt.Errorf("node %d: transport: %w", i, err)
		}
		tr = nt
	} else {
		cfg.BindAddr = "127.0.0.1:0"
	}
	if tr != nil && c.count {
		ct := &countingTransport{Transport: tr}
		c.counters[i] = ct
		tr = ct
	}
	cfg.Transport = tr
	if c.logs != nil {
		cfg.Logger = slog.New(c.logs)
	}
	if tweak != nil {
		tweak(cfg)
	}
	nd, err := aegis.New(cfg)
	if err != nil {
		if tr != nil {
			_ = tr.Shutdown()
		}
		return fmt.Errorf("node %d: %w", i, err)
	}
	nd.Subscribe(c.views[i].onEvent) // Shutdown cancels it
	c.nodes[i] = nd
	return nil
}

// startLoss sets the -loss packet loss on every link of the in-memory
// network.
func (c *cluster) startLoss() {
	if c.nw != nil && c.opt.loss > 0 {
		c.nw.SetLoss("*", "*", c.opt.loss)
		progress("  %.0f%% loss on every link from now on", 100*c.opt.loss)
	}
}

// seedsFor returns the addresses node i joins.
func (c *cluster) seedsFor(i int) []string {
	addrs := []string{c.nodes[0].Addr()}
	if i <= 1 || c.opt.seeds <= 1 {
		return addrs
	}
	perm := rand.Perm(i - 1) // earlier nodes 1..i-1
	for _, p := range perm {
		if len(addrs) >= c.opt.seeds {
			break
		}
		addrs = append(addrs, c.nodes[p+1].Addr())
	}
	return addrs
}

func (c *cluster) join(ctx context.Context, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := c.nodes[i].Join(ctx, c.seedsFor(i)...); err != nil {
		return fmt.Errorf("node %d: %w", i, err)
	}
	return nil
}

// startAll starts every node, then joins nodes 1..n-1 one after another.
func (c *cluster) startAll(ctx context.Context, tweak func(*aegis.Config)) error {
	t0 := time.Now()
	for i := range c.nodes {
		if err := c.start(i, tweak); err != nil {
			return err
		}
	}
	t1 := time.Now()
	for i := 1; i < len(c.nodes); i++ {
		if err := c.join(ctx, i); err != nil {
			return err
		}
	}
	progress("  started %d nodes in %v, joined in %v", len(c.nodes), roundD(t1.Sub(t0)), roundD(time.Since(t1)))
	return nil
}

// register registers instance id of svc on node i.
func (c *cluster) register(ctx context.Context, i int, svc, id string) (*aegis.Registration, error) {
	r, err := c.nodes[i].Register(ctx, aegis.Service{Name: svc, InstanceID: id, Handler: nopHandler})
	if err != nil {
		return nil, fmt.Errorf("node %d: register %s/%s: %w", i, svc, id, err)
	}
	c.regs.Store(instKey{svc, id}, r)
	return r, nil
}

// waitCount waits until every node in idx (all nodes if idx is nil) sees
// exactly want live instances of svc. It returns how many nodes got there.
func (c *cluster) waitCount(svc string, want int, idx []int, limit time.Duration) (bool, int) {
	if idx == nil {
		idx = make([]int, len(c.nodes))
		for i := range idx {
			idx[i] = i
		}
	}
	deadline := time.Now().Add(limit)
	for {
		ok := 0
		for _, i := range idx {
			if c.views[i].countOf(svc) == want {
				ok++
			}
		}
		if ok == len(idx) {
			return true, ok
		}
		if time.Now().After(deadline) {
			return false, ok
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// settle makes the cluster quiet: every node registers one "warmup"
// instance, all wait until every node sees all of them, then all
// deregister and wait until every node sees none, then sleep opt.settle.
func (c *cluster) settle(ctx context.Context) error {
	n := len(c.nodes)
	t0 := time.Now()
	regs := make([]*aegis.Registration, n)
	for i := range c.nodes {
		r, err := c.register(ctx, i, "warmup", fmt.Sprintf("w-%d", i))
		if err != nil {
			return err
		}
		regs[i] = r
	}
	if ok, k := c.waitCount("warmup", n, nil, c.opt.cap); !ok {
		return fmt.Errorf("settle: only %d/%d nodes saw all %d warmup instances after %v", k, n, n, c.opt.cap)
	}
	t1 := time.Now()
	for _, r := range regs {
		_ = r.Deregister(ctx)
	}
	if ok, k := c.waitCount("warmup", 0, nil, c.opt.cap); !ok {
		c.reportLeftovers("warmup", 10)
		return fmt.Errorf("settle: only %d/%d nodes saw the warmup instances deregistered after %v", k, n, c.opt.cap)
	}
	progress("  warmup seen by all in %v, its deregistration in %v; settling %v", roundD(t1.Sub(t0)), roundD(time.Since(t1)), c.opt.settle)
	time.Sleep(c.opt.settle)
	return nil
}

// reportLeftovers prints, for up to max nodes, the instances of svc they
// still hold (what a failed settle step left behind).
func (c *cluster) reportLeftovers(svc string, max int) {
	for i, nd := range c.nodes {
		insts := nd.Instances(svc)
		if len(insts) == 0 {
			continue
		}
		if max--; max < 0 {
			progress("  (more nodes hold %s instances)", svc)
			return
		}
		for _, in := range insts {
			progress("  node %d still holds %s/%s of node %s (%v, learned or last heard %v ago)", i, svc, in.ID, in.Node, in.Status, time.Since(in.LastHeartbeat).Round(time.Millisecond))
		}
	}
}

// shutdown stops every node concurrently.
func (c *cluster) shutdown() {
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		if nd == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = nd.Shutdown()
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		progress("  shut down %d nodes in %v", len(c.nodes), roundD(time.Since(t0)))
	case <-time.After(60 * time.Second):
		progress("  WARNING: shutdown still running after 60s; moving on")
	}
}

func roundD(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
