package aegis

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/aegisipc/aegis/internal/clock"
	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testConfig returns a Config on the in-memory network with fast gossip.
// clk may be nil for the wall clock.
func testConfig(nw *transport.Network, i int, clk clock.Clock) *Config {
	cfg := DefaultConfig()
	cfg.NodeName = fmt.Sprintf("node-%02d", i)
	cfg.Transport = nw.NewTransport(fmt.Sprintf("10.0.%d.%d:7946", i/200, i%200+1))
	cfg.Gossip = LocalGossip()
	cfg.HealthCheckInterval = 50 * time.Millisecond
	if os.Getenv("AEGIS_TEST_LOG") != "" {
		cfg.Logger = slogStderr()
	}
	cfg.clock = clk
	return cfg
}

// cluster is a test cluster on one in-memory network.
type cluster struct {
	t     *testing.T
	net   *transport.Network
	clk   *clock.Fake // nil when on the wall clock
	start time.Time   // the fake clock's start
	nodes []*Node
	regs  []*Registration
}

type clusterOpt func(*Config)

// overTCP makes the cluster use the real network on loopback instead of the
// in-memory one.
func overTCP(cfg *Config) {
	_ = cfg.Transport.Shutdown() // the in-memory one testConfig made
	cfg.Transport = nil
	cfg.BindAddr = "127.0.0.1:0"
}

// newCluster starts n nodes, joins them all to node 0, and registers one
// instance of service "svc" on each (ID "inst-<i>").
func newCluster(t *testing.T, n int, fake bool, opts ...clusterOpt) *cluster {
	t.Helper()
	c := &cluster{t: t, net: transport.NewNetwork()}
	if fake {
		c.start = time.Unix(1_700_000_000, 0)
		c.clk = clock.NewFake(c.start)
	}
	for i := 0; i < n; i++ {
		c.addNode(opts...)
	}
	t.Cleanup(c.shutdown)
	return c
}

func (c *cluster) addNode(opts ...clusterOpt) *Node {
	c.t.Helper()
	i := len(c.nodes)
	var clk clock.Clock
	if c.clk != nil {
		clk = c.clk
	}
	cfg := testConfig(c.net, i, clk)
	for _, o := range opts {
		o(cfg)
	}

	nd, err := New(cfg)
	require.NoError(c.t, err)
	c.nodes = append(c.nodes, nd)
	if i > 0 {
		_, err := nd.Join(context.Background(), c.nodes[0].Addr())
		require.NoError(c.t, err)
	}
	reg, err := nd.Register(context.Background(), Service{Name: "svc", InstanceID: fmt.Sprintf("inst-%d", i), Handler: echoHandler})
	require.NoError(c.t, err)
	c.regs = append(c.regs, reg)
	return nd
}

func (c *cluster) shutdown() {
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); _ = nd.Shutdown() }()
	}
	wg.Wait()
}

func echoHandler(ctx context.Context, req *Request) ([]byte, error) { return req.Payload, nil }

// status returns node's view of service "svc" instance id, or -1 if unknown.
func status(nd *Node, id string) Status {
	for _, in := range nd.Instances("svc") {
		if in.ID == id {
			return in.Status
		}
	}
	return -1
}

// waitConverged waits until every live node sees every instance as healthy.
func (c *cluster) waitConverged(timeout time.Duration, live ...*Node) {
	c.t.Helper()
	if live == nil {
		live = c.nodes
	}
	testutil.Eventually(c.t, timeout, func() bool {
		for _, nd := range live {
			if len(nd.HealthyInstances("svc")) != len(live) {
				return false
			}
		}
		return true
	}, "every node sees %d healthy instances", len(live))
	if c.clk != nil {
		c.settle()
	}
}

// settle waits until every node has the newest heartbeat of every instance,
// so that nothing in flight gets stamped after the fake clock moves on.
func (c *cluster) settle() {
	c.t.Helper()
	seq := func(nd *Node, k instKey) uint64 {
		nd.reg.mu.RLock()
		defer nd.reg.mu.RUnlock()
		if e, ok := nd.reg.entries[k]; ok {
			return e.rec.Seq
		}
		return 0
	}
	testutil.Eventually(c.t, 10*time.Second, func() bool {
		for i, reg := range c.regs {
			want := seq(c.nodes[i], reg.key)
			for _, nd := range c.nodes {
				if seq(nd, reg.key) != want {
					return false
				}
			}
		}
		return true
	}, "heartbeats settle")
}

// eventLog records a node's events.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func (l *eventLog) add(e Event) { l.mu.Lock(); l.evs = append(l.evs, e); l.mu.Unlock() }

func (l *eventLog) has(typ EventType, id string, ns Status, reason string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.evs {
		if e.Type == typ && e.Instance.ID == id && e.NewStatus == ns && e.Reason == reason {
			return true
		}
	}
	return false
}

// String lists the events, for failure messages.
func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := ""
	for _, e := range l.evs {
		out += fmt.Sprintf("\n  %v %s %v->%v %q", e.Type, e.Instance.ID, e.OldStatus, e.NewStatus, e.Reason)
	}
	return out
}

func subscribeLog(nd *Node) *eventLog {
	l := &eventLog{}
	nd.Subscribe(l.add)
	return l
}
