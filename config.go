// This file holds Config, its defaults and its validation.

package aegis

import (
	crand "crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

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
	// AdvertiseAddr, if set, is the gossip "ip:port" told to peers instead
	// of the bound address (for NAT or port mapping). With a bind-all
	// BindAddr ("0.0.0.0:7946") and no AdvertiseAddr, a private IP of this
	// machine is advertised (and New fails if it has none).
	AdvertiseAddr string
	// CallAddr is the "ip:port" the call listener binds. Default "": the
	// IP of BindAddr and a free port. Ignored when Transport is set.
	CallAddr string
	// AdvertiseCallAddr, if set, is the call "ip:port" peers dial, when it
	// differs from CallAddr (NAT, port mapping). Default "": CallAddr as
	// bound, with a bind-all IP replaced as for AdvertiseAddr. Ignored
	// when Transport is set.
	AdvertiseCallAddr string
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
	// HedgeDelay is how long CallWithFailover waits for an instance to
	// answer an idempotent call before sending the same request (same
	// message ID) to another instance as well; the first answer wins and
	// the other attempt is cancelled, so a hung instance (stopped process,
	// long pause, black hole) costs callers this delay instead of
	// AttemptTimeout. An instance that loses a race has its node pinged;
	// one whose node does not answer counts toward ejection
	// (EjectAfterFailures). Hedges come out of the retry budget. 0 (the
	// default): four times the service's average answer time as this node
	// measured it, at least 50ms and at most AttemptTimeout/2 (100ms before
	// the first answer). Negative: no hedging. Methods listed in
	// Service.NonIdempotent are never hedged.
	HedgeDelay time.Duration
	// RoleLeaseTimeout is the fencing delay of role groups in
	// PromoteWithMajority mode: an active instance serves only while a
	// strict majority of its group answered its lease round trip within
	// this time, and demotes itself (reason "fenced") once it has not. Lease
	// rounds run every RoleLeaseTimeout/4. A standby is promoted no sooner
	// than 1.5 × RoleLeaseTimeout after any member last confirmed the old
	// active, so the old one has fenced itself by its own clock first
	// (the half is the margin for clock rate drift and scheduling). Every
	// node of a cluster should use the same value. Default 2s.
	RoleLeaseTimeout time.Duration
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

	// MaxInstancesPerNode bounds the instances one node may host: Register
	// refuses more (ErrTooManyInstances), and records received for a node
	// that already has this many are dropped (counted in
	// Stats.RecordsRefused). Default 10,000.
	MaxInstancesPerNode int
	// MaxInstances bounds the instances (and, separately, the tombstones of
	// deregistered ones) this node keeps about the whole cluster; records
	// beyond it are dropped and counted. Default 100,000.
	MaxInstances int
	// MaxResourcesPerInstance bounds the resources one instance may own
	// (Registration.Claim refuses more with ErrResourceLimit; claims
	// received beyond it are dropped). Default 1,000.
	MaxResourcesPerInstance int
	// MaxResources bounds the resource claims this node keeps about the
	// whole cluster. Default 100,000.
	MaxResources int

	// Gossip tunes memberlist. Default LANGossip().
	Gossip GossipConfig
	// SecretKey, if set, encrypts and authenticates gossip with AES-GCM
	// (16, 24 or 32 bytes) and protects calls with mutual TLS 1.3 whose
	// certificates every node derives from the key (no files needed): a
	// process without the key can neither gossip nor call. All nodes of a
	// cluster need the same key; rotate it with Node.Keys. NewSecretKey
	// makes one. A node bound to a non-loopback address refuses to start
	// without it unless AllowInsecure is set.
	SecretKey []byte
	// TLS, if set, protects calls with your own certificates instead of the
	// ones derived from SecretKey: per-node identity under your CA. Its
	// Certificates[0] must name this node (a URI SAN aegis://node/NAME, or
	// a DNS SAN equal to NodeName); RootCAs (or ClientCAs) verifies peers.
	// A callee's certificate must name the node that owns the instance
	// called. TLS 1.3 and client certificates are enforced.
	TLS *tls.Config
	// ClusterName labels every gossip message and stream (memberlist's
	// label): nodes of clusters with different names never merge, even
	// when they share a network and a key. At most 255 bytes. Default ""
	// (no label).
	ClusterName string
	// AllowInsecure lets a node bind a non-loopback address without
	// SecretKey or TLS: anyone who reaches its ports can then join, forge
	// gossip and call its instances. Default false.
	AllowInsecure bool
	// Call connection limits; zero values take the documented defaults of
	// CallLimits.
	CallLimits CallLimits

	// Logger receives Aegis' and memberlist's logs. Default: discard.
	Logger *slog.Logger
	// MeterProvider receives metrics. Default: the otel global provider.
	MeterProvider metric.MeterProvider
	// TracerProvider, when set, receives a client span for every Call and
	// CallWithFailover, a child span per attempt (instance, node, outcome;
	// first try, same-instance retry, failover or hedge) and a server span
	// for every call a local instance handles (marked when answered from
	// the dedup cache). Default: the otel global provider. Tracing is off,
	// at no cost to calls, while the provider hands out spans that record
	// nothing.
	TracerProvider trace.TracerProvider
	// Propagator carries the trace context across nodes in each attempt's
	// request headers (W3C trace context with propagation.TraceContext).
	// Default: the otel global propagator (otel.GetTextMapPropagator).
	Propagator propagation.TextMapPropagator

	// clock is the node's time source (see "How the code is organised" in
	// doc.go); tests inject a fake one. Nil: the wall clock.
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
	// HeartbeatRetransmitMult, when above 0, makes heartbeats travel by
	// gossip as well, with a queue of their own (records and heartbeats
	// take turns filling packets): every node that hears a new heartbeat
	// message passes it on, so each node hears about
	// HeartbeatRetransmitMult × ⌈log10(N+1)⌉ copies. Default 0: each
	// node sends its heartbeat messages (one compact message per round for
	// up to about 200 instances) straight to every member once, and a
	// member that has heard nothing new from a node for 1.25 intervals
	// asks two others for what they heard (Stats.HeartbeatWants). That
	// keeps the age of the newest heartbeat near 1.5 intervals with 10%
	// packet loss, at one copy per receiver where gossip needs about
	// eight for the same (measured in BENCHMARKS.md); gossip as well only
	// adds redundancy, for networks losing far more.
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

// CallLimits bound what a node's call listener accepts from the network.
// Every limit is counted when it acts (Stats) and logged at most a few
// times a minute.
type CallLimits struct {
	// FrameTimeout bounds how long a request frame may take to arrive whole
	// once it has started; the connection is then closed. Default 10s.
	FrameTimeout time.Duration
	// IdleTimeout closes a connection with no call in flight and no bytes
	// arriving for that long. Callers close their idle connections sooner,
	// so a call never races the close. Default 2m.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds a TLS handshake (with SecretKey or TLS).
	// Default 10s.
	HandshakeTimeout time.Duration
	// MaxConns bounds the call connections served at once; more are
	// closed on arrival. Default 4096.
	MaxConns int
	// MaxConnsPerIP bounds the connections served at once from one remote
	// IP address. Default 512.
	MaxConnsPerIP int
	// MaxInflightPerConn bounds the calls of one connection running at
	// once; at the cap the connection stops reading until one finishes, so
	// the caller is slowed down by TCP flow control (nothing is refused).
	// Default 1024.
	MaxInflightPerConn int
}

// defaultCallLimits are the CallLimits of DefaultConfig.
func defaultCallLimits() CallLimits {
	return CallLimits{FrameTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, HandshakeTimeout: 10 * time.Second,
		MaxConns: 4096, MaxConnsPerIP: 512, MaxInflightPerConn: 1024}
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
		HeartbeatRetransmitMult: 0,
		PushPullInterval:        30 * time.Second,
		GossipToTheDeadTime:     30 * time.Second,
		TCPTimeout:              10 * time.Second,
		ReconnectInterval:       10 * time.Second,
		ReconnectTimeout:        24 * time.Hour,
	}
}

// FastLANGossip returns timings for a LAN where a crashed node should be
// noticed in about a second rather than LANGossip's seven: probes every
// 200ms with a 100ms ack timeout, suspicion multiplier 3, gossip every
// 100ms to 3 nodes, every memberlist message and record sent
// 8 × ⌈log10(N+1)⌉ times (RetransmitMult 8); push/pull and reconnects as
// LANGossip. Lifeguard awareness is memberlist's default: a node that
// misses acks or has to refute probes up to 8× slower, so a starved node
// accuses no one.
//
// Detection: a suspect is declared dead 3 × log10(N) × 200ms after the
// first suspicion once one other member confirms it (0.78 s at 20 nodes,
// 1.02 s at 50), up to six times that without a confirmation. Measured at
// 20 nodes on loopback after an abrupt shutdown: median 1.1–1.3 s, max
// 1.4 s (LANGossip 6.9 / 9.0 s; multiplier 4, as before, 1.57 / 1.80 s).
// Probing every 150ms would give the same window with two confirmations
// for a third more probes and CPU.
//
// Price, at 50 nodes with 5 instances each over loopback: 5 probes a
// second per node instead of 1; 920 UDP bytes and 19.8 packets a second
// per node instead of 528 and 11.8, and 1.1 to 2.0 ms of CPU a second
// instead of 0.5 to 0.7 (more probes, more gossip rounds).
//
// False verdicts: a member that cannot answer for about 0.8 s is taken
// for dead. Measured over 10 minutes at 20 nodes with 10% packet loss and
// one node starved 5 s in every 30: none while a busy loop held both
// cores (the node at nice 19); one in 40 windows with the node's cgroup
// limited to 2% of a CPU (it needs about 1.5%); one in nearly every
// window when it could not run for longer stretches (SCHED_IDLE under the
// busy loop, or a 1% limit), which LANGossip's 5.2 s window rides out.
// Loss alone makes members suspect a healthy one every 4 s or so; every
// member must then hear its refutation: at RetransmitMult 4 one of 19
// missed all ~7 copies about once in 70 suspicions (a false verdict), at
// 8 each hears about 14. See BENCHMARKS.md.
func FastLANGossip() GossipConfig {
	g := LANGossip()
	g.ProbeInterval = 200 * time.Millisecond
	g.ProbeTimeout = 100 * time.Millisecond
	g.SuspicionMult = 3
	g.GossipInterval = 100 * time.Millisecond
	g.RetransmitMult = 8
	return g
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
		HeartbeatRetransmitMult: 0,
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
		RoleLeaseTimeout:        2 * time.Second,
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
		MaxInstancesPerNode:     10_000,
		MaxInstances:            100_000,
		MaxResourcesPerInstance: 1000,
		MaxResources:            100_000,
		CallLimits:              defaultCallLimits(),
		Gossip:                  LANGossip(),
	}
}

// Validate checks the Config and returns an error wrapping ErrInvalidConfig
// that names the first offending field.
func (c *Config) Validate() error {
	for _, check := range []func() error{c.validateAddrs, c.validateDurations, c.validateTimingRules, c.validateCounts, c.validateSecurity} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// invalid returns the error Validate reports for field.
func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
}

func (c *Config) validateAddrs() error {
	if c.NodeName != "" && !validName(c.NodeName, maxNameLen) {
		return invalid("NodeName", "%q: use 1-128 letters, digits, '.', '_', '-' or ':'", c.NodeName)
	}
	if c.Transport == nil {
		if err := checkHostPort(c.BindAddr); err != nil {
			return invalid("BindAddr", "%q: %v", c.BindAddr, err)
		}
	}
	if c.CallAddr != "" {
		if err := checkHostPort(c.CallAddr); err != nil {
			return invalid("CallAddr", "%q: %v", c.CallAddr, err)
		}
	}
	for _, a := range []struct{ name, addr string }{{"AdvertiseAddr", c.AdvertiseAddr}, {"AdvertiseCallAddr", c.AdvertiseCallAddr}} {
		if a.addr == "" {
			continue
		}
		if err := checkHostPort(a.addr); err != nil {
			return invalid(a.name, "%q: %v", a.addr, err)
		}
		if host, port, _ := net.SplitHostPort(a.addr); net.ParseIP(host) == nil || port == "0" {
			return invalid(a.name, "%q: must be an IP address with a non-zero port", a.addr)
		}
	}
	return nil
}

// validateDurations checks that every duration is positive.
func (c *Config) validateDurations() error {
	durations := []struct {
		name string
		d    time.Duration
	}{
		{"HeartbeatInterval", c.HeartbeatInterval},
		{"HeartbeatTimeout", c.HeartbeatTimeout},
		{"HealthCheckInterval", c.HealthCheckInterval},
		{"ReapTimeout", c.ReapTimeout},
		{"AttemptTimeout", c.AttemptTimeout},
		{"RoleLeaseTimeout", c.RoleLeaseTimeout},
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
		{"CallLimits.FrameTimeout", c.CallLimits.FrameTimeout},
		{"CallLimits.IdleTimeout", c.CallLimits.IdleTimeout},
		{"CallLimits.HandshakeTimeout", c.CallLimits.HandshakeTimeout},
	}
	for _, d := range durations {
		if d.d <= 0 {
			return invalid(d.name, "must be positive, got %v", d.d)
		}
	}
	return nil
}

// validateTimingRules checks the rules between durations.
func (c *Config) validateTimingRules() error {
	switch {
	case c.HeartbeatTimeout < 2*c.HeartbeatInterval:
		return invalid("HeartbeatTimeout", "(%v) must be at least 2×HeartbeatInterval (%v)", c.HeartbeatTimeout, c.HeartbeatInterval)
	case c.ReapTimeout < c.HeartbeatTimeout:
		return invalid("ReapTimeout", "(%v) must be at least HeartbeatTimeout (%v)", c.ReapTimeout, c.HeartbeatTimeout)
	case c.Gossip.ProbeTimeout >= c.Gossip.ProbeInterval:
		return invalid("Gossip.ProbeTimeout", "(%v) must be shorter than Gossip.ProbeInterval (%v)", c.Gossip.ProbeTimeout, c.Gossip.ProbeInterval)
	case c.RoleLeaseTimeout < 10*time.Millisecond:
		return invalid("RoleLeaseTimeout", "(%v) must be at least 10ms", c.RoleLeaseTimeout)
	case c.EjectMaxTime < c.EjectBaseTime:
		return invalid("EjectMaxTime", "(%v) must be at least EjectBaseTime (%v)", c.EjectMaxTime, c.EjectBaseTime)
	}
	return nil
}

// validateCounts checks counts, sizes and ratios.
func (c *Config) validateCounts() error {
	atLeast := []struct {
		name   string
		n, min int
	}{
		{"MaxAttempts", c.MaxAttempts, 1},
		{"Gossip.SuspicionMult", c.Gossip.SuspicionMult, 1},
		{"Gossip.GossipNodes", c.Gossip.GossipNodes, 1},
		{"Gossip.RetransmitMult", c.Gossip.RetransmitMult, 1},
		{"Gossip.HeartbeatRetransmitMult", c.Gossip.HeartbeatRetransmitMult, 0},
		{"MaxFrameSize", c.MaxFrameSize, rpc.MinMaxFrameSize},
		{"RetryBudgetMinPerSecond", c.RetryBudgetMinPerSecond, 0},
		{"EjectAfterFailures", c.EjectAfterFailures, 0},
		{"SameInstanceRetries", c.SameInstanceRetries, 0},
		{"DedupMaxEntries", c.DedupMaxEntries, 0},
		{"MaxInstancesPerNode", c.MaxInstancesPerNode, 1},
		{"MaxInstances", c.MaxInstances, 1},
		{"MaxResourcesPerInstance", c.MaxResourcesPerInstance, 1},
		{"MaxResources", c.MaxResources, 1},
		{"CallLimits.MaxConns", c.CallLimits.MaxConns, 1},
		{"CallLimits.MaxConnsPerIP", c.CallLimits.MaxConnsPerIP, 1},
		{"CallLimits.MaxInflightPerConn", c.CallLimits.MaxInflightPerConn, 1},
	}
	for _, v := range atLeast {
		if v.n < v.min {
			return invalid(v.name, "must be at least %d, got %d", v.min, v.n)
		}
	}
	if c.RetryBudgetRatio < 0 || c.RetryBudgetRatio > 1 {
		return invalid("RetryBudgetRatio", "must be within [0, 1], got %v", c.RetryBudgetRatio)
	}
	if c.DedupMaxEntries > 0 && c.DedupMaxBytes <= 0 {
		return invalid("DedupMaxBytes", "must be positive while DedupMaxEntries is (%d), got %d", c.DedupMaxEntries, c.DedupMaxBytes)
	}
	return nil
}

// validateSecurity checks the key, the label, and that a node reachable
// from other hosts is protected.
func (c *Config) validateSecurity() error {
	switch len(c.SecretKey) {
	case 0, 16, 24, 32:
	default:
		return invalid("SecretKey", "must be 16, 24 or 32 bytes, got %d", len(c.SecretKey))
	}
	if len(c.ClusterName) > 255 {
		return invalid("ClusterName", "must be at most 255 bytes, got %d", len(c.ClusterName))
	}
	if c.Transport == nil && len(c.SecretKey) == 0 && c.TLS == nil && !c.AllowInsecure && !loopbackBind(c.BindAddr) {
		return invalid("SecretKey", "is required to bind %s, which other hosts can reach: set SecretKey to the same 32 random bytes on every node "+
			"(aegis.NewSecretKey() makes one; from a shell: head -c 32 /dev/urandom | base64), "+
			"or set AllowInsecure to run without protection", c.BindAddr)
	}
	return nil
}

// loopbackBind reports whether addr binds a loopback address only.
func loopbackBind(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// NewSecretKey returns 32 random bytes for Config.SecretKey.
func NewSecretKey() []byte {
	k := make([]byte, 32)
	if _, err := crand.Read(k); err != nil {
		panic("aegis: crypto/rand failed: " + err.Error())
	}
	return k
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

// withDefaults returns a validated copy of cfg (DefaultConfig() when nil)
// with every unset optional field filled in: a generated node name, a
// discarding logger, RoundRobin, the otel global providers and
// propagator, and the wall clock.
func withDefaults(cfg *Config) (Config, error) {
	if cfg == nil {
		cfg = DefaultConfig()
	}
	c := *cfg
	c.SecretKey = slices.Clone(cfg.SecretKey)
	if cfg.TLS != nil {
		c.TLS = cfg.TLS.Clone()
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	if c.NodeName == "" {
		host, _ := os.Hostname()
		if !validName(host, 100) {
			host = "node"
		}
		c.NodeName = host + "-" + randomHex(4)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
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
	if c.Propagator == nil {
		c.Propagator = otel.GetTextMapPropagator()
	}
	if c.clock == nil {
		c.clock = clock.Real{}
	}
	return c, nil
}
