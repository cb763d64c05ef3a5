// Package aegis lets the processes of a cluster find each other's services,
// know which instances are alive, and call them directly, with no broker and
// no central registry.
//
// Every process starts a Node. Nodes gossip service-instance records and
// heartbeats peer to peer through hashicorp/memberlist (SWIM with Lifeguard).
// An instance whose newest heartbeat is older than Config.HeartbeatTimeout
// (an absolute time, 30 s by default, measured on the receiver's own clock)
// is marked unhealthy and leaves the routing pool; when heartbeats resume it
// is healthy again. When memberlist declares a whole node dead, that node's
// instances become unhealthy at once; when a node leaves gracefully, its
// instances are deregistered.
//
// A Node is safe for concurrent use. Any number of Nodes may live in one
// process: nothing is global.
package aegis

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/aegisipc/aegis/internal/bqueue"
	"github.com/aegisipc/aegis/internal/clock"
	"github.com/aegisipc/aegis/internal/rpc"
	"github.com/aegisipc/aegis/transport"
)

// Config configures a Node. Start from DefaultConfig and change what you
// need; New copies the Config, so later changes to it have no effect.
type Config struct {
	// NodeName must be unique in the cluster. Default: the hostname plus a
	// random suffix.
	NodeName string
	// BindAddr is the gossip "host:port" of the real network transport. Port
	// 0 picks free ports for gossip and for calls. Ignored when Transport is
	// set. Default "127.0.0.1:0".
	BindAddr string
	// AdvertiseAddr, if set, is the gossip "host:port" told to peers instead
	// of the bound address (for NAT or a 0.0.0.0 bind).
	AdvertiseAddr string
	// Transport carries gossip and calls. Nil: the real network on BindAddr.
	// Tests pass one from transport.NewNetwork. The Node owns it from New on
	// and shuts it down with the Node.
	Transport transport.Transport

	// HeartbeatEnabled makes every registered instance send heartbeats: one
	// at once, then every HeartbeatInterval. When false, this node's
	// instances send none and peers judge them only by whole-node failure
	// (memberlist), never by the heartbeat timeout. Default true.
	HeartbeatEnabled bool
	// HeartbeatInterval is the time between two heartbeats. Default 5s.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout is the absolute age after which an instance's newest
	// heartbeat makes it unhealthy. At least 2×HeartbeatInterval. Default 30s.
	HeartbeatTimeout time.Duration
	// HealthCheckInterval is how often heartbeat ages are checked. Default 1s.
	HealthCheckInterval time.Duration
	// ReapTimeout is how long an instance stays visible (as unhealthy) after
	// its heartbeats stopped or its node failed, before it is removed with an
	// EventDeregistered (reason "reaped"). It is also how long tombstones of
	// deregistered instances are kept so that stale gossip cannot revive
	// them. Default 1h.
	ReapTimeout time.Duration

	// Balancer picks among healthy instances. Default RoundRobin().
	Balancer Balancer
	// MaxAttempts is how many distinct instances CallWithFailover tries in
	// total. Default 3.
	MaxAttempts int
	// AttemptTimeout bounds one call attempt; an attempt also ends at the
	// caller's deadline, whichever comes first. Default 5s.
	AttemptTimeout time.Duration
	// MaxFrameSize is the largest call frame (request or response, payload
	// plus envelope) this node sends or accepts. Default 4 MiB.
	MaxFrameSize int
	// RetryBudgetRatio caps CallWithFailover's retries at this fraction of
	// calls (plus RetryBudgetMinPerSecond), so that when every instance
	// fails, failover does not multiply the load. Default 0.2.
	RetryBudgetRatio float64
	// RetryBudgetMinPerSecond retries are always allowed each second.
	// Default 10.
	RetryBudgetMinPerSecond int
	// EjectAfterFailures consecutive unavailable or timed-out attempts to an
	// instance eject it from this node's routing pool (never the last
	// candidates) for EjectBaseTime, doubling with each further ejection up
	// to EjectMaxTime; a fresh heartbeat ends the ejection once the time is
	// up, and a successful call clears the history. 0 disables. Default 3.
	EjectAfterFailures int
	// EjectBaseTime is the first ejection period. Default 1s.
	EjectBaseTime time.Duration
	// EjectMaxTime caps the ejection period. Default 30s.
	EjectMaxTime time.Duration

	// SameInstanceRetries is how many times a call is retried on the same
	// instance, with the same message ID, after a failure that may have
	// happened after the request was delivered (connection reset, response
	// lost, attempt timeout), before failing over. Retries wait a jittered
	// exponential backoff from SameInstanceBackoff. Default 2.
	SameInstanceRetries int
	// SameInstanceBackoff is the first backoff before a same-instance retry;
	// it doubles per retry (with full jitter), capped at 100×. Default 5ms.
	SameInstanceBackoff time.Duration
	// DedupWindow is how long a local instance remembers the outcome of a
	// call by message ID, to answer a retry without running the handler
	// again. Default 300s.
	DedupWindow time.Duration
	// DedupMaxEntries bounds each local instance's dedup cache (oldest
	// evicted first). 0 disables deduplication. Default 10,000.
	DedupMaxEntries int
	// DedupMaxBytes bounds the memory each local instance's dedup cache
	// holds, counted as the response payloads, error messages and message
	// IDs kept plus about 160 bytes per entry (oldest evicted first). A
	// response larger than the bound on its own is not remembered, so a
	// retry of its call runs the handler again. Must be positive when
	// DedupMaxEntries is. Default 64 MiB.
	DedupMaxBytes int64

	// Gossip tunes memberlist. Default LANGossip().
	Gossip GossipConfig
	// SecretKey, if set, encrypts gossip with AES (16, 24 or 32 bytes). All
	// nodes of a cluster need the same key.
	SecretKey []byte

	// Logger receives Aegis' and memberlist's logs. Default: discard.
	Logger *slog.Logger
	// MeterProvider receives metrics. Default: the otel global provider.
	MeterProvider metric.MeterProvider
	// TracerProvider receives traces. Default: the otel global provider.
	TracerProvider trace.TracerProvider

	// clock is the time source for heartbeats and health; tests inject a
	// fake one. Nil: the wall clock.
	clock clock.Clock
}

// GossipConfig tunes the memberlist layer. The defaults are memberlist's LAN
// profile except where noted; LocalGossip is a faster profile for loopback
// and tests.
type GossipConfig struct {
	// ProbeInterval is the SWIM failure-detector probe period.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for an ack.
	ProbeTimeout time.Duration
	// SuspicionMult scales how long a suspect node has to refute before it
	// is declared dead (SuspicionMult × log10(N) × ProbeInterval).
	SuspicionMult int
	// GossipInterval is how often broadcasts are piggybacked to GossipNodes
	// random peers.
	GossipInterval time.Duration
	// GossipNodes is the gossip fan-out.
	GossipNodes int
	// RetransmitMult scales how many times each node sends one record
	// broadcast (RetransmitMult × log10(N+1)).
	RetransmitMult int
	// HeartbeatRetransmitMult does the same for heartbeat batches, which
	// have a queue of their own so that they never crowd out records.
	// Default 4. Every node that hears a new batch passes it on, so each
	// node hears about HeartbeatRetransmitMult × ⌈log10(N+1)⌉ copies (8 at
	// 50 nodes) and misses a given batch with a probability near e to the
	// minus that: 0.03% measured at 50 nodes, harmless against a timeout
	// of six intervals. Lower values save bandwidth.
	HeartbeatRetransmitMult int
	// PushPullInterval is the period of full-state anti-entropy exchange.
	PushPullInterval time.Duration
	// GossipToTheDeadTime is how long dead nodes still receive gossip, so a
	// falsely accused node can refute.
	GossipToTheDeadTime time.Duration
	// TCPTimeout bounds stream operations (push/pull, Join).
	TCPTimeout time.Duration
	// ReconnectInterval is how often this node tries to rejoin one node
	// that memberlist declared dead, so that the two sides of a healed
	// partition find each other again.
	ReconnectInterval time.Duration
	// ReconnectTimeout is how long a dead node keeps being retried.
	ReconnectTimeout time.Duration
}

// LANGossip returns memberlist's LAN timings: probe 1s / 500ms, gossip every
// 200ms to 3 nodes, suspicion multiplier 4, push/pull every 30s, plus
// reconnect attempts every 10s for 24h.
func LANGossip() GossipConfig {
	return GossipConfig{
		ProbeInterval:           time.Second,
		ProbeTimeout:            500 * time.Millisecond,
		SuspicionMult:           4,
		GossipInterval:          200 * time.Millisecond,
		GossipNodes:             3,
		RetransmitMult:          4,
		HeartbeatRetransmitMult: 4,
		PushPullInterval:        30 * time.Second,
		GossipToTheDeadTime:     30 * time.Second,
		TCPTimeout:              10 * time.Second,
		ReconnectInterval:       10 * time.Second,
		ReconnectTimeout:        24 * time.Hour,
	}
}

// LocalGossip returns timings for nodes on one host or in tests: probes every
// 200ms, gossip every 50ms, push/pull every 5s, reconnect every second.
func LocalGossip() GossipConfig {
	return GossipConfig{
		ProbeInterval:           200 * time.Millisecond,
		ProbeTimeout:            100 * time.Millisecond,
		SuspicionMult:           3,
		GossipInterval:          50 * time.Millisecond,
		GossipNodes:             3,
		RetransmitMult:          4,
		HeartbeatRetransmitMult: 4,
		PushPullInterval:        5 * time.Second,
		GossipToTheDeadTime:     5 * time.Second,
		TCPTimeout:              2 * time.Second,
		ReconnectInterval:       time.Second,
		ReconnectTimeout:        time.Hour,
	}
}

// DefaultConfig returns a fresh Config with every default filled in. Each
// call returns a new value.
func DefaultConfig() *Config {
	return &Config{
		BindAddr:                "127.0.0.1:0",
		HeartbeatEnabled:        true,
		HeartbeatInterval:       5 * time.Second,
		HeartbeatTimeout:        30 * time.Second,
		HealthCheckInterval:     time.Second,
		ReapTimeout:             time.Hour,
		Balancer:                RoundRobin(),
		MaxAttempts:             3,
		AttemptTimeout:          5 * time.Second,
		MaxFrameSize:            rpc.DefaultMaxFrameSize,
		RetryBudgetRatio:        0.2,
		RetryBudgetMinPerSecond: 10,
		EjectAfterFailures:      3,
		EjectBaseTime:           time.Second,
		EjectMaxTime:            30 * time.Second,
		SameInstanceRetries:     2,
		SameInstanceBackoff:     5 * time.Millisecond,
		DedupWindow:             300 * time.Second,
		DedupMaxEntries:         10000,
		DedupMaxBytes:           64 << 20,
		Gossip:                  LANGossip(),
	}
}

// Validate checks the Config and returns an error wrapping ErrInvalidConfig
// that names the first offending field.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	if c.NodeName != "" && !validName(c.NodeName, 128) {
		return bad("NodeName", "%q: use 1-128 letters, digits, '.', '_', '-' or ':'", c.NodeName)
	}
	if c.Transport == nil {
		if err := checkHostPort(c.BindAddr); err != nil {
			return bad("BindAddr", "%q: %v", c.BindAddr, err)
		}
	}
	if c.AdvertiseAddr != "" {
		if err := checkHostPort(c.AdvertiseAddr); err != nil {
			return bad("AdvertiseAddr", "%q: %v", c.AdvertiseAddr, err)
		}
		if host, port, _ := net.SplitHostPort(c.AdvertiseAddr); net.ParseIP(host) == nil || port == "0" {
			return bad("AdvertiseAddr", "%q: must be an IP address with a non-zero port", c.AdvertiseAddr)
		}
	}
	durations := []struct {
		name string
		d    time.Duration
	}{
		{"HeartbeatInterval", c.HeartbeatInterval},
		{"HeartbeatTimeout", c.HeartbeatTimeout},
		{"HealthCheckInterval", c.HealthCheckInterval},
		{"ReapTimeout", c.ReapTimeout},
		{"AttemptTimeout", c.AttemptTimeout},
		{"EjectBaseTime", c.EjectBaseTime},
		{"EjectMaxTime", c.EjectMaxTime},
		{"SameInstanceBackoff", c.SameInstanceBackoff},
		{"DedupWindow", c.DedupWindow},
		{"Gossip.ProbeInterval", c.Gossip.ProbeInterval},
		{"Gossip.ProbeTimeout", c.Gossip.ProbeTimeout},
		{"Gossip.GossipInterval", c.Gossip.GossipInterval},
		{"Gossip.PushPullInterval", c.Gossip.PushPullInterval},
		{"Gossip.GossipToTheDeadTime", c.Gossip.GossipToTheDeadTime},
		{"Gossip.TCPTimeout", c.Gossip.TCPTimeout},
		{"Gossip.ReconnectInterval", c.Gossip.ReconnectInterval},
		{"Gossip.ReconnectTimeout", c.Gossip.ReconnectTimeout},
	}
	for _, d := range durations {
		if d.d <= 0 {
			return bad(d.name, "must be positive, got %v", d.d)
		}
	}
	if c.HeartbeatTimeout < 2*c.HeartbeatInterval {
		return bad("HeartbeatTimeout", "(%v) must be at least 2×HeartbeatInterval (%v)", c.HeartbeatTimeout, c.HeartbeatInterval)
	}
	if c.ReapTimeout < c.HeartbeatTimeout {
		return bad("ReapTimeout", "(%v) must be at least HeartbeatTimeout (%v)", c.ReapTimeout, c.HeartbeatTimeout)
	}
	if c.Gossip.ProbeTimeout >= c.Gossip.ProbeInterval {
		return bad("Gossip.ProbeTimeout", "(%v) must be shorter than Gossip.ProbeInterval (%v)", c.Gossip.ProbeTimeout, c.Gossip.ProbeInterval)
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"MaxAttempts", c.MaxAttempts}, {"Gossip.SuspicionMult", c.Gossip.SuspicionMult},
		{"Gossip.GossipNodes", c.Gossip.GossipNodes}, {"Gossip.RetransmitMult", c.Gossip.RetransmitMult},
		{"Gossip.HeartbeatRetransmitMult", c.Gossip.HeartbeatRetransmitMult}} {
		if v.n < 1 {
			return bad(v.name, "must be at least 1, got %d", v.n)
		}
	}
	if c.MaxFrameSize < rpc.MinMaxFrameSize {
		return bad("MaxFrameSize", "must be at least %d bytes, got %d", rpc.MinMaxFrameSize, c.MaxFrameSize)
	}
	if c.RetryBudgetRatio < 0 || c.RetryBudgetRatio > 1 {
		return bad("RetryBudgetRatio", "must be within [0, 1], got %v", c.RetryBudgetRatio)
	}
	if c.RetryBudgetMinPerSecond < 0 {
		return bad("RetryBudgetMinPerSecond", "must not be negative, got %d", c.RetryBudgetMinPerSecond)
	}
	if c.EjectAfterFailures < 0 {
		return bad("EjectAfterFailures", "must not be negative, got %d", c.EjectAfterFailures)
	}
	if c.SameInstanceRetries < 0 {
		return bad("SameInstanceRetries", "must not be negative, got %d", c.SameInstanceRetries)
	}
	if c.DedupMaxEntries < 0 {
		return bad("DedupMaxEntries", "must not be negative, got %d", c.DedupMaxEntries)
	}
	if c.DedupMaxEntries > 0 && c.DedupMaxBytes <= 0 {
		return bad("DedupMaxBytes", "must be positive while DedupMaxEntries is (%d), got %d", c.DedupMaxEntries, c.DedupMaxBytes)
	}
	if c.EjectMaxTime < c.EjectBaseTime {
		return bad("EjectMaxTime", "(%v) must be at least EjectBaseTime (%v)", c.EjectMaxTime, c.EjectBaseTime)
	}
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		return bad("SecretKey", "must be 16, 24 or 32 bytes, got %d", len(c.SecretKey))
	}
	return nil
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return fmt.Errorf("missing host")
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// node lifecycle states
const (
	stateRunning int32 = iota
	stateLeaving
	stateStopped
)

// Node is one member of an Aegis cluster: it gossips, hosts registered
// service instances and calls other nodes' instances.
type Node struct {
	cfg     Config
	name    string
	log     *slog.Logger
	clk     clock.Clock
	tr      transport.Transport
	ml      *memberlist.Memberlist
	mlp     atomic.Pointer[memberlist.Memberlist] // ml, for callbacks that can run during Create
	queue   *bqueue.Queue                         // records and tombstones
	hbQueue *bqueue.Queue                         // heartbeat batches
	hbMu    sync.Mutex                            // serializes heartbeat rounds
	outbox  chan outMsg                           // direct sends, run by outboxLoop
	reg     *registry
	bus     *eventBus
	met     *nodeMetrics
	stats   nodeStats

	mu    sync.Mutex // guards local and serializes Register/Deregister with Leave/Shutdown
	local map[instKey]*Registration
	state atomic.Int32

	lastPull atomic.Int64 // unix ns of the last pull triggered by an unknown heartbeat

	client    *rpc.Client
	server    *rpc.Server
	served    atomic.Pointer[map[instKey]*Registration] // local instances, for the call server
	msgPrefix string
	msgSeq    atomic.Uint64
	budget    *retryBudget

	failedMu sync.Mutex // guards failed
	failed   map[string]failedNode
	// peers holds a copy of every other live member's memberlist.Node,
	// taken in the membership callbacks (memberlist holds its lock then).
	// memberlist updates its own Node structs in place, so reading those
	// (Members()) from another goroutine races with it.
	peersMu sync.RWMutex
	peers   map[string]*memberlist.Node

	lifeMu       sync.Mutex // serializes Leave and Shutdown
	stopCh       chan struct{}
	wg           sync.WaitGroup
	shutdownOnce sync.Once
	leaveOnce    sync.Once
	leaveErr     error
}

type failedNode struct {
	addr  string
	since time.Time
}

// New validates cfg, starts gossip and the call listener, and returns the
// running Node. It copies cfg. A nil cfg means DefaultConfig().
func New(cfg *Config) (*Node, error) {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	c := *cfg
	c.SecretKey = append([]byte(nil), cfg.SecretKey...)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.NodeName == "" {
		host, _ := os.Hostname()
		if !validName(host, 100) {
			host = "node"
		}
		c.NodeName = host + "-" + randomHex(4)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Balancer == nil {
		c.Balancer = RoundRobin()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.clock == nil {
		c.clock = clock.Real{}
	}
	n := &Node{
		cfg:    c,
		name:   c.NodeName,
		log:    c.Logger.With("node", c.NodeName),
		clk:    c.clock,
		local:  make(map[instKey]*Registration),
		failed: make(map[string]failedNode),
		peers:  make(map[string]*memberlist.Node),
		stopCh: make(chan struct{}),
	}
	n.met = newNodeMetrics(c.MeterProvider)
	n.bus = newEventBus()
	n.reg = newRegistry(n.name, n.clk, c.HeartbeatTimeout, c.ReapTimeout, n.bus.publish)
	n.reg.ejectAfter = c.EjectAfterFailures
	n.msgPrefix = n.name + "-" + randomHex(4) + "-"
	n.budget = newRetryBudget(c.RetryBudgetRatio, c.RetryBudgetMinPerSecond)

	tr := c.Transport
	if tr == nil {
		nt, err := transport.NewNet(transport.NetConfig{
			BindAddr:      c.BindAddr,
			AdvertiseAddr: c.AdvertiseAddr,
			Logger:        slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		})
		if err != nil {
			n.bus.close()
			return nil, fmt.Errorf("aegis: start network transport: %w", err)
		}
		tr = nt
	}
	n.tr = tr

	numNodes := func() int {
		if ml := n.mlp.Load(); ml != nil {
			return ml.NumMembers()
		}
		return 1
	}
	n.queue = bqueue.New(c.Gossip.RetransmitMult, numNodes)
	n.hbQueue = bqueue.New(c.Gossip.HeartbeatRetransmitMult, numNodes)
	n.outbox = make(chan outMsg, outboxSize)
	ml, err := memberlist.Create(n.memberlistConfig())
	if err != nil {
		_ = tr.Shutdown()
		n.bus.close()
		return nil, fmt.Errorf("aegis: start gossip: %w", err)
	}
	n.ml = ml
	n.mlp.Store(ml)

	// A dial is bounded by AttemptTimeout: the client shares one pending
	// dial among the callers to a peer, and one that never completes (a
	// black-holed address) must not hold every later call to that peer.
	dialTimeout := c.AttemptTimeout
	n.client = rpc.NewClient(rpc.ClientOptions{MaxFrameSize: c.MaxFrameSize,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			return tr.DialCall(ctx, addr)
		}})
	n.server = rpc.NewServer(n.serveCall, rpc.ServerOptions{MaxFrameSize: c.MaxFrameSize, Logger: n.log})
	n.spawn(func() {
		if err := n.server.Serve(tr.CallListener()); err != nil && n.state.Load() == stateRunning {
			n.log.Error("call listener stopped", "err", err)
		}
	})
	n.spawn(n.outboxLoop)
	// Tickers are made here, not in the goroutines, so that a test's fake
	// clock cannot move before they exist.
	if c.HeartbeatEnabled {
		hbTicker := n.clk.NewTicker(c.HeartbeatInterval)
		n.spawn(func() { n.heartbeatLoop(hbTicker) })
	}
	healthTicker := n.clk.NewTicker(c.HealthCheckInterval)
	n.spawn(func() { n.healthLoop(healthTicker) })
	n.spawn(n.reconnectLoop)
	n.log.Info("aegis node started", "addr", n.Addr(), "calls", tr.CallAddr())
	return n, nil
}

func (n *Node) memberlistConfig() *memberlist.Config {
	c := n.cfg
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.name
	mc.Transport = n.tr
	mc.ProbeInterval = c.Gossip.ProbeInterval
	mc.ProbeTimeout = c.Gossip.ProbeTimeout
	mc.SuspicionMult = c.Gossip.SuspicionMult
	mc.GossipInterval = c.Gossip.GossipInterval
	mc.GossipNodes = c.Gossip.GossipNodes
	mc.RetransmitMult = c.Gossip.RetransmitMult
	mc.PushPullInterval = c.Gossip.PushPullInterval
	mc.GossipToTheDeadTime = c.Gossip.GossipToTheDeadTime
	mc.TCPTimeout = c.Gossip.TCPTimeout
	// Heartbeats keep the broadcast queue busy, so nearly every gossip
	// round sends packets; memberlist's LZW compression of each one costs
	// far more CPU than the bytes it saves.
	mc.EnableCompression = false
	if len(c.SecretKey) > 0 {
		mc.SecretKey = c.SecretKey
	}
	if ga, ok := n.tr.(interface{ GossipAddr() string }); ok && c.AdvertiseAddr == "" {
		c.AdvertiseAddr = ga.GossipAddr()
	}
	if host, port, err := net.SplitHostPort(c.AdvertiseAddr); err == nil {
		mc.AdvertiseAddr = host
		mc.AdvertisePort, _ = strconv.Atoi(port)
	}
	d := &delegate{n: n}
	mc.Delegate = d
	mc.Events = d
	mc.Logger = slog.NewLogLogger(n.log.With("component", "memberlist").Handler(), slog.LevelDebug)
	return mc
}

// spawn runs f in a goroutine counted by the Node's WaitGroup, unless the
// node has stopped (then it reports false and f does not run).
func (n *Node) spawn(f func()) bool {
	n.mu.Lock()
	if n.state.Load() == stateStopped {
		n.mu.Unlock()
		return false
	}
	n.wg.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

// Name returns the node's unique name.
func (n *Node) Name() string { return n.name }

// Addr returns the gossip address other nodes pass to Join.
func (n *Node) Addr() string { return n.ml.LocalNode().Address() }

// Join contacts the given seed nodes (gossip "host:port") and merges state
// with them. It returns how many seeds it reached; an error means none was.
func (n *Node) Join(ctx context.Context, seeds ...string) (int, error) {
	if n.state.Load() != stateRunning {
		return 0, ErrShutdown
	}
	if len(seeds) == 0 {
		return 0, fmt.Errorf("aegis: Join needs at least one seed address")
	}
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	if !n.spawn(func() {
		k, err := n.ml.Join(seeds)
		ch <- result{k, err}
		if k > 0 {
			n.catchUp()
		}
	}) {
		return 0, ErrShutdown
	}
	select {
	case r := <-ch:
		if r.err != nil && r.n == 0 {
			return 0, fmt.Errorf("aegis: join %v: %w", seeds, r.err)
		}
		return r.n, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("aegis: join %v: %w", seeds, ctx.Err())
	}
}

// catchUp runs one more push/pull with a random member a moment after a
// join. The join's own exchange misses what is registered between it and
// the moment the rest of the cluster learns of this node (when they start
// sending to it directly); under a cold start of many nodes that gap would
// otherwise be closed only by the next heartbeat (5 s) or the periodic
// push/pull (30 s and more).
func (n *Node) catchUp() {
	d := catchUpDelay + time.Duration(rand.Int64N(int64(catchUpDelay)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-n.stopCh:
		return
	case <-t.C:
	}
	n.pull("")
}

// catchUpDelay is the least wait before catchUp (up to twice that).
const catchUpDelay = time.Second

// Leave leaves the cluster gracefully: it stops accepting registrations,
// deregisters every local instance (peers see EventDeregistered with
// reason "deregistered", then the node's departure with reason "left"),
// tells peers it is leaving, and shuts the node down. ctx bounds how long it
// waits for the departure to spread. Calling it again, or after Shutdown,
// returns nil.
func (n *Node) Leave(ctx context.Context) error {
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	n.leaveOnce.Do(func() {
		n.mu.Lock()
		if !n.state.CompareAndSwap(stateRunning, stateLeaving) {
			n.mu.Unlock()
			return
		}
		regs := make([]*Registration, 0, len(n.local))
		for _, r := range n.local {
			regs = append(regs, r)
		}
		n.mu.Unlock()
		n.drain(ctx, regs)
		for _, r := range regs {
			n.deregister(r, "left")
		}
		timeout := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
		// Give the tombstones a chance to ride gossip before the leave
		// message: wait until each was sent at least once.
		n.waitQueueDrained(ctx, timeout/2)
		if err := n.ml.Leave(max(timeout/2, time.Millisecond)); err != nil {
			n.leaveErr = fmt.Errorf("aegis: leave: %w", err)
		}
		if err := n.shutdown(); err != nil && n.leaveErr == nil {
			n.leaveErr = err
		}
	})
	return n.leaveErr
}

// drain marks regs draining (peers stop routing to them at once: the status
// goes out directly to every member) and waits until their in-flight calls
// finish or ctx ends.
func (n *Node) drain(ctx context.Context, regs []*Registration) {
	if len(regs) == 0 {
		return
	}
	for _, r := range regs {
		r.status.Store(int32(StatusDraining))
	}
	n.heartbeatRound(true)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		busy := int64(0)
		for _, r := range regs {
			busy += r.inflight.Load()
		}
		if busy == 0 {
			return
		}
		select {
		case <-ctx.Done():
			n.log.Warn("leave: drain cut short", "in-flight", busy, "err", ctx.Err())
			return
		case <-t.C:
		}
	}
}

// waitQueueDrained waits until every queued broadcast has been sent its full
// number of times (a few gossip rounds), for at most limit or until ctx ends.
func (n *Node) waitQueueDrained(ctx context.Context, limit time.Duration) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	t := time.NewTicker(n.cfg.Gossip.GossipInterval / 4)
	defer t.Stop()
	for n.queue.Len() > 0 && n.ml.NumMembers() > 1 {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-t.C:
		}
	}
}

// Shutdown stops the node abruptly: peers see it as crashed (its instances
// turn unhealthy with reason "node-failed"). It stops heartbeats, gossip and
// the call listener, waits for every goroutine the node started, and
// returns. Calling it again returns nil.
func (n *Node) Shutdown() error {
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	return n.shutdown()
}

func (n *Node) shutdown() error {
	var err error
	n.shutdownOnce.Do(func() {
		n.mu.Lock()
		n.state.Store(stateStopped)
		for _, r := range n.local {
			r.done.Store(true)
		}
		n.mu.Unlock()
		close(n.stopCh)
		if e := n.ml.Shutdown(); e != nil {
			err = fmt.Errorf("aegis: shutdown gossip: %w", e)
		}
		// memberlist shuts the transport down; do it again in case memberlist
		// did not get that far (Transport.Shutdown is idempotent).
		_ = n.tr.Shutdown()
		_ = n.server.Close()
		_ = n.client.Close()
		n.wg.Wait()
		n.bus.close()
		n.log.Info("aegis node stopped")
	})
	return err
}

func randomHex(nbytes int) string {
	b := make([]byte, nbytes)
	if _, err := crand.Read(b); err != nil {
		panic("aegis: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}
