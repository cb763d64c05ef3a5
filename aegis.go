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
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.opentelemetry.io/otel/trace"

	"github.com/aegisipc/aegis/internal/budget"
	"github.com/aegisipc/aegis/internal/clock"
	"github.com/aegisipc/aegis/internal/rpc"
	"github.com/aegisipc/aegis/internal/tlsconf"
	"github.com/aegisipc/aegis/transport"
)

// node lifecycle states
const (
	stateRunning int32 = iota
	stateLeaving
	stateStopped
)

// Node is one member of an Aegis cluster: it gossips, hosts registered
// service instances and calls other nodes' instances.
//
// A Node composes parts with one job each (see doc.go): the registry (what
// the cluster knows), the gossiper (memberlist and everything sent through
// it), the caller (outgoing calls) and the call server (incoming calls);
// Node itself owns the local registrations, heartbeats and the lifecycle.
//
// Lock order, outermost first: hbMu → mu → registry.mu → eventBus.mu →
// subscriber.mu. The gossiper's peersMu and failedMu, and the registry's
// snapshot reads, are leaves: nothing is locked while holding them.
type Node struct {
	cfg    Config
	name   string
	log    *slog.Logger
	clk    clock.Clock
	tr     transport.Transport
	reg    *registry
	bus    *eventBus
	met    *nodeMetrics
	stats  nodeStats
	tracer trace.Tracer // nil: tracing off

	gossip  *gossiper
	caller  *caller
	server  *callServer
	keyring *memberlist.Keyring // gossip keys; nil without SecretKey
	creds   *tlsconf.Creds      // call TLS; nil without SecretKey and TLS

	hbMu       sync.Mutex // serializes heartbeat rounds
	beatRounds uint64     // heartbeat rounds so far; guarded by hbMu
	life       uint64     // this node's life in compact heartbeats (wire.Beats): random, never 0
	nextIndex  atomic.Uint32
	mu         sync.Mutex // guards local; serializes Register/Deregister with Leave/Shutdown
	local      map[instKey]*Registration
	state      atomic.Int32

	lastHealth atomic.Int64 // wall clock (unix ns) of the last health check

	roleKick chan struct{} // capacity 1: run the role loop now (promote.go)
	roleRuns atomic.Uint64 // role loop passes, for tests
	started  time.Time     // the node's clock at construction, with its monotonic reading (see mono)

	lifeMu       sync.Mutex // serializes Leave and Shutdown
	stopCh       chan struct{}
	wg           sync.WaitGroup // every goroutine the node starts (see spawn)
	shutdownOnce sync.Once
	leaveOnce    sync.Once
	abortLeave   context.CancelCauseFunc // ends a Leave in progress; guarded by mu
}

// New validates cfg, starts gossip and the call listener, and returns the
// running Node. It copies cfg. A nil cfg means DefaultConfig().
func New(cfg *Config) (*Node, error) {
	c, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}
	n, err := newNode(c)
	if err != nil {
		return nil, err
	}
	n.start()
	return n, nil
}

// newNode builds a Node and its parts from a Config with defaults filled
// in; memberlist is already running when it returns, nothing else is.
func newNode(c Config) (*Node, error) {
	n := &Node{
		cfg:      c,
		name:     c.NodeName,
		log:      c.Logger.With("node", c.NodeName),
		clk:      c.clock,
		local:    make(map[instKey]*Registration),
		life:     newLife(),
		stopCh:   make(chan struct{}),
		roleKick: make(chan struct{}, 1),
		started:  c.clock.Now(),
		met:      newNodeMetrics(c.MeterProvider),
		bus:      newEventBus(),
		tracer:   tracerFor(c.TracerProvider),
	}
	n.reg = newRegistry(n.name, n.clk, &n.cfg, n.emit)
	n.reg.beating = n.beatingNow
	tr := c.Transport
	if tr == nil {
		nt, err := transport.NewNet(transport.NetConfig{
			BindAddr:          c.BindAddr,
			AdvertiseAddr:     c.AdvertiseAddr,
			CallBindAddr:      c.CallAddr,
			AdvertiseCallAddr: c.AdvertiseCallAddr,
			Logger:            memberlistLogger(n.log.With("component", "transport")),
		})
		if err != nil {
			n.bus.close()
			return nil, fmt.Errorf("aegis: start network transport: %w", err)
		}
		tr = nt
	}
	n.tr = tr
	if err := n.setupSecurity(); err != nil {
		_ = tr.Shutdown()
		n.bus.close()
		return nil, err
	}
	n.server = newCallServer(n)
	n.caller = newCaller(n)
	g, err := newGossiper(n)
	if err != nil {
		_ = tr.Shutdown()
		n.bus.close()
		return nil, fmt.Errorf("aegis: start gossip: %w", err)
	}
	n.gossip = g
	n.met.observe(c.MeterProvider, n)
	return n, nil
}

// newCaller builds the node's calling side.
func newCaller(n *Node) *caller {
	c := n.cfg
	// A dial is bounded by AttemptTimeout: the client shares one pending
	// dial among the callers to a peer, and one that never completes (a
	// black-holed address) must not hold every later call to that peer.
	dialTimeout := c.AttemptTimeout
	client := rpc.NewClient(rpc.ClientOptions{MaxFrameSize: c.MaxFrameSize,
		// Idle connections are dropped well before the peers' call servers
		// would close them (CallLimits.IdleTimeout), so a call never races
		// that close.
		IdleTimeout: c.CallLimits.IdleTimeout / 2,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			conn, err := n.tr.DialCall(ctx, addr)
			if err != nil || n.creds == nil {
				return conn, err
			}
			return n.secureDial(ctx, conn, addr)
		}})
	return &caller{
		cfg: &n.cfg, reg: n.reg, client: client, stats: &n.stats, met: n.met, tracer: n.tracer, prop: c.Propagator,
		budget:    budget.New(c.RetryBudgetRatio, c.RetryBudgetMinPerSecond, n.clk.Now),
		msgPrefix: n.name + "-" + randomHex(4) + "-",
		stopped:   func() bool { return n.state.Load() == stateStopped },
		alive:     func(node string) bool { return n.gossip.pingNode(node) },
		spawn:     n.spawn,
	}
}

// start starts the node's goroutines: the call server, the gossiper's
// loops, heartbeats and the health checker.
func (n *Node) start() {
	n.spawn(func() {
		if err := n.server.rpc.Serve(n.callListener()); err != nil && n.state.Load() == stateRunning {
			n.log.Error("call listener stopped", "err", err)
		}
	})
	n.gossip.start()
	n.logEvents()
	// Tickers are made here, not in the goroutines, so that a test's fake
	// clock cannot move before they exist.
	if n.cfg.HeartbeatEnabled {
		hbTicker := n.clk.NewTicker(n.cfg.HeartbeatInterval)
		n.spawn(func() { everyTick(n.stopCh, hbTicker, func() { n.heartbeatRound(gossipOnly) }) })
	}
	healthTicker := n.clk.NewTicker(n.cfg.HealthCheckInterval)
	n.spawn(func() { everyTick(n.stopCh, healthTicker, n.healthTick) })
	n.roleLoop()
	n.log.Info("aegis node started", "addr", n.Addr(), "calls", n.tr.CallAddr())
}

// beatingNow reports whether the local instance k sends heartbeats now.
// It reads the served map, so it takes no lock (the registry calls it with
// its own held).
func (n *Node) beatingNow(k instKey) bool {
	r := n.server.lookup(k.service, k.id)
	return r != nil && !r.paused.Load() && !r.done.Load()
}

// everyTick runs f on each tick of t until stop is closed, then stops t.
func everyTick(stop <-chan struct{}, t clock.Ticker, f func()) {
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C():
			f()
		}
	}
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
func (n *Node) Addr() string { return n.gossip.ml.LocalNode().Address() }

// Join contacts the given seed nodes (gossip "host:port") and merges state
// with them. It returns how many seeds it reached; an error means none was.
// If another live node already uses this node's name, Join fails with
// ErrNameConflict and shuts this node down.
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
	n.gossip.joining.Add(1)
	if !n.spawn(func() {
		k, err := n.gossip.ml.Join(seeds)
		if k > 0 {
			err = n.checkNameConflict()
		}
		if !errors.Is(err, ErrNameConflict) { // a duplicate refutes nothing until it stops
			n.gossip.joining.Add(-1)
		}
		ch <- result{k, err}
		if k > 0 && err == nil {
			n.gossip.catchUp()
		}
	}) {
		n.gossip.joining.Add(-1)
		return 0, ErrShutdown
	}
	select {
	case r := <-ch:
		if errors.Is(r.err, ErrNameConflict) {
			_ = n.Shutdown()
			return 0, r.err
		}
		if r.err != nil && r.n == 0 {
			return 0, fmt.Errorf("aegis: join %v: %w", seeds, r.err)
		}
		return r.n, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("aegis: join %v: %w", seeds, ctx.Err())
	}
}

// checkNameConflict runs after a join: if the cluster knows another node
// under this node's name at another address, and that node answers a ping,
// two live processes share a name, which the cluster cannot tell apart.
// One that does not answer is this node's own previous life (a restart
// before its crash was noticed), which this node replaces.
func (n *Node) checkNameConflict() error {
	other := n.gossip.conflict.Swap(nil)
	if other == nil || !n.gossip.aliveAt(other) {
		return nil
	}
	return fmt.Errorf("%w: node name %q is already used by a live node at %s; give every node its own Config.NodeName (this node has shut down)",
		ErrNameConflict, n.name, other.Address())
}

// Leave leaves the cluster gracefully: it stops accepting registrations,
// drains and deregisters every local instance (every peer sees
// EventDeregistered with reason "left"), tells peers it is leaving (so
// they log and report it as left, not failed, even when it hosts no
// instance), and shuts the node down. ctx bounds the whole of it:
// in-flight calls, and the departure spreading (5 s when ctx has no
// deadline); whatever time the drain leaves is given to the departure.
// When ctx ends first, Leave stops waiting, shuts the node down and
// returns ctx's error at once; so does a Shutdown called meanwhile, with
// ErrShutdown. When no other member is left to tell, the departure is not
// an error. Calling it again, or after Shutdown, returns nil.
func (n *Node) Leave(ctx context.Context) error {
	ctx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	n.lifeMu.Lock()
	defer n.lifeMu.Unlock()
	var err error
	n.leaveOnce.Do(func() {
		n.mu.Lock()
		if !n.state.CompareAndSwap(stateRunning, stateLeaving) {
			n.mu.Unlock()
			return
		}
		n.abortLeave = abort
		regs := make([]*Registration, 0, len(n.local))
		for _, r := range n.local {
			regs = append(regs, r)
		}
		n.mu.Unlock()
		if e := n.leave(ctx, regs); e != nil {
			err = fmt.Errorf("aegis: leave: %w", e)
		}
		if e := n.shutdown(); e != nil && err == nil {
			err = e
		}
	})
	return err
}

// leave drains and deregisters regs and tells peers this node leaves,
// within ctx (or 5 s when it has no deadline); it returns the reason ctx
// ended when the departure had not gone out by then.
func (n *Node) leave(ctx context.Context, regs []*Registration) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	n.drain(ctx, regs)
	for _, r := range regs {
		n.deregister(r, "left")
	}
	deadline, _ := ctx.Deadline()
	// The tombstones and the leave notice go before memberlist's leave
	// message, so that peers know the departure is graceful when it
	// comes: wait until each was sent (a few gossip rounds), for at most
	// half the time left.
	n.gossip.announceLeave(true)
	_ = n.gossip.waitQueueDrained(ctx, time.Until(deadline)/2)
	if n.gossip.depart(ctx) != nil {
		return context.Cause(ctx)
	}
	return nil
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
	n.heartbeatRound(gossipAndDirect)
	for _, r := range regs {
		if err := r.waitIdle(ctx); err != nil {
			n.log.Warn("drain cut short", "service", r.key.service, "instance", r.key.id, "in-flight", r.inflight.Load(), "err", err)
			return
		}
	}
}

// Shutdown stops the node abruptly: peers see it as crashed (its instances
// turn unhealthy with reason "node-failed"). It stops heartbeats, gossip and
// the call listener, waits for every goroutine the node started, and
// returns. Calling it again returns nil.
func (n *Node) Shutdown() error {
	n.mu.Lock()
	if n.abortLeave != nil {
		n.abortLeave(ErrShutdown) // a Leave in progress stops waiting
	}
	n.mu.Unlock()
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
		if e := n.gossip.ml.Shutdown(); e != nil {
			err = fmt.Errorf("aegis: shutdown gossip: %w", e)
		}
		// memberlist shuts the transport down; do it again in case memberlist
		// did not get that far (Transport.Shutdown is idempotent).
		_ = n.tr.Shutdown()
		_ = n.server.rpc.Close()
		_ = n.caller.client.Close()
		n.wg.Wait()
		n.met.unobserve()
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
