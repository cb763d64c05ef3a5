package aegis

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/internal/wire"
)

// TestLeaveAtOnce: every node of a cluster leaves at the same moment, each
// with 5 s to do it. Each must be done long before: a node whose peers all
// left before its departure went out has nobody left to tell, which is no
// reason to wait out its ctx.
func TestLeaveAtOnce(t *testing.T) {
	for _, n := range []int{2, 4} {
		c := newCluster(t, n, false)
		c.waitConverged(10 * time.Second)
		took := make([]time.Duration, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, nd := range c.nodes {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				start := time.Now()
				errs[i] = nd.Leave(ctx)
				took[i] = time.Since(start)
			})
		}
		wg.Wait()
		for i := range n {
			assert.NoError(t, errs[i], "%d nodes: %s", n, c.nodes[i].Name())
			assert.Less(t, took[i], 2*time.Second, "%d nodes: %s left long before its ctx ended", n, c.nodes[i].Name())
		}
		t.Logf("%d nodes leaving at once took %v", n, took)
	}
}

// TestLeaveHonoursContext: Leave returns ctx's error promptly when ctx
// ends while it waits (here, for a call in flight to drain and then for
// its departure to go out to a peer that is cut off), and a Shutdown
// during a Leave ends it promptly too. Either way the node is shut down
// with every goroutine ended (goleak checks the rest).
func TestLeaveHonoursContext(t *testing.T) {
	const bound = time.Second // for Leave to notice ctx's end and shut down
	// hung registers a service on node whose handler runs until the test
	// ends (or the node stops) and starts a call to it from caller.
	hung := func(t *testing.T, caller, node *Node) {
		release := make(chan struct{})
		t.Cleanup(func() { close(release) }) // before the cluster shuts down
		_, err := node.Register(context.Background(), Service{Name: "hung", Handler: func(ctx context.Context, _ *Request) ([]byte, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil, nil
		}})
		require.NoError(t, err)
		testutil.Eventually(t, 5*time.Second, func() bool { return len(caller.HealthyInstances("hung")) == 1 }, "the caller knows the service")
		go func() { _, _ = caller.Call(context.Background(), "hung", "m", nil) }()
		testutil.Eventually(t, 5*time.Second, func() bool { return callsIn(node, "hung") == 1 }, "the call is in flight")
	}

	t.Run("ctx cancelled during the drain", func(t *testing.T) {
		c := newCluster(t, 2, false)
		c.waitConverged(10 * time.Second)
		hung(t, c.nodes[0], c.nodes[1])

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		go func() { time.Sleep(100 * time.Millisecond); cancel() }()
		start := time.Now()
		err := c.nodes[1].Leave(ctx)
		assert.ErrorIs(t, err, context.Canceled)
		assert.Less(t, time.Since(start), 100*time.Millisecond+bound, "Leave returned soon after ctx ended")
	})

	t.Run("ctx ends while the departure goes out", func(t *testing.T) {
		c := newCluster(t, 2, false)
		c.waitConverged(10 * time.Second)
		// A peer that cannot be reached is still a member until it is
		// declared dead: the departure is sent to it again and again.
		c.net.Partition([]string{c.nodes[0].Addr()}, []string{c.nodes[1].Addr()})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := c.nodes[1].Leave(ctx)
		took := time.Since(start)
		if err != nil {
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		}
		assert.Less(t, took, 300*time.Millisecond+bound, "Leave returned soon after ctx ended")
	})

	t.Run("Shutdown during Leave", func(t *testing.T) {
		c := newCluster(t, 2, false)
		c.waitConverged(10 * time.Second)
		hung(t, c.nodes[0], c.nodes[1])

		left := make(chan error, 1)
		go func() { left <- c.nodes[1].Leave(context.Background()) }()
		testutil.Eventually(t, 5*time.Second, func() bool { return c.nodes[1].state.Load() == stateLeaving }, "Leave has begun")
		start := time.Now()
		require.NoError(t, c.nodes[1].Shutdown())
		assert.Less(t, time.Since(start), bound, "Shutdown ended the Leave in progress promptly")
		select {
		case err := <-left:
			assert.ErrorIs(t, err, ErrShutdown)
		case <-time.After(bound):
			t.Fatal("Leave did not return after Shutdown")
		}
	})
}

// callsIn returns the calls in flight on node's instance of service.
func callsIn(nd *Node, service string) int64 {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	for _, r := range nd.local {
		if r.key.service == service {
			return r.inflight.Load()
		}
	}
	return -1
}

// TestEmptyNodeLeaveIsLeft: a node that hosts no instance (so no
// tombstone says it left) leaves gracefully; its peers log "node left",
// never "node failed", and drop it from Members instead of keeping it as
// failed. A node that hosts none and crashes is still reported failed.
func TestEmptyNodeLeaveIsLeft(t *testing.T) {
	logs := &testutil.Buffer{}
	c := newCluster(t, 2, false, func(cfg *Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	c.waitConverged(10 * time.Second)
	empty := func(i int) *Node {
		nd, err := New(testConfig(c.net, i, nil))
		require.NoError(t, err)
		t.Cleanup(func() { _ = nd.Shutdown() })
		_, err = nd.Join(context.Background(), c.nodes[0].Addr())
		require.NoError(t, err)
		testutil.Eventually(t, 10*time.Second, func() bool {
			return memberState(c.nodes[0], nd.Name()) == "alive" && memberState(c.nodes[1], nd.Name()) == "alive"
		}, "both peers see %s", nd.Name())
		return nd
	}

	leaver := empty(2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, leaver.Leave(ctx))
	testutil.Eventually(t, 10*time.Second, func() bool {
		return memberState(c.nodes[0], leaver.Name()) == "" && memberState(c.nodes[1], leaver.Name()) == ""
	}, "both peers drop %s from Members, not keep it as failed", leaver.Name())
	assert.Equal(t, 2, logLines(logs, "node left", leaver.Name()), "both peers log it left:\n%s", logs)
	assert.Zero(t, logLines(logs, "node failed", leaver.Name()), "nobody logs it failed:\n%s", logs)

	crasher := empty(3)
	require.NoError(t, crasher.Shutdown())
	testutil.Eventually(t, 20*time.Second, func() bool {
		return memberState(c.nodes[0], crasher.Name()) == "failed" && memberState(c.nodes[1], crasher.Name()) == "failed"
	}, "both peers report %s failed", crasher.Name())
	assert.Equal(t, 2, logLines(logs, "node failed", crasher.Name()), "both peers log it failed:\n%s", logs)
}

// logLines counts the lines of logs with message msg about peer.
func logLines(logs *testutil.Buffer, msg, peer string) int {
	n := 0
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "msg=\""+msg+"\" ") && strings.Contains(line, " peer="+peer+"\n") {
			n++
		}
	}
	return n
}

// memberState returns the state nd's Members gives node, or "".
func memberState(nd *Node, node string) string {
	for _, m := range nd.Members() {
		if m.Name == node {
			return m.State.String()
		}
	}
	return ""
}

// TestLeaveNoticeChecked: a leave notice counts only from a live member
// at the address it gives, once, and never about this node itself.
func TestLeaveNoticeChecked(t *testing.T) {
	c := newCluster(t, 2, false)
	c.waitConverged(10 * time.Second)
	g, other := c.nodes[0].gossip, c.nodes[1]
	assert.False(t, g.noteLeave(&wire.Leave{Node: other.Name(), Addr: "10.9.9.9:7946"}), "another address")
	assert.False(t, g.noteLeave(&wire.Leave{Node: "node-77", Addr: other.Addr()}), "not a member")
	assert.False(t, g.noteLeave(&wire.Leave{Node: c.nodes[0].Name(), Addr: c.nodes[0].Addr()}), "this node")
	assert.True(t, g.noteLeave(&wire.Leave{Node: other.Name(), Addr: other.Addr()}))
	assert.False(t, g.noteLeave(&wire.Leave{Node: other.Name(), Addr: other.Addr()}), "not new: not gossiped again")
	assert.True(t, g.reg.left(other.Name()), "consumed when memberlist reports it gone")
	assert.False(t, g.reg.left(other.Name()))
}
