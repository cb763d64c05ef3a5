// This file runs the agent in the test process: joining, leaving on a
// signal, and a second signal cutting the leave short.

package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/testutil"
)

// inProcessAgent is an agent run by the test process, fed signals through
// sigs.
type inProcessAgent struct {
	sigs chan os.Signal
	done chan error // receives run's result
	logs *testutil.Buffer
}

// startInProcess parses args (plus loopback test defaults) and runs the
// agent in a goroutine; started, if set, is the agent's start hook.
func startInProcess(t *testing.T, args []string, started func(*aegis.Node)) *inProcessAgent {
	t.Helper()
	args = append([]string{"-bind", "127.0.0.1:0", "-gossip", "local", "-log-format", "json"}, args...)
	o, err := parseAgent(args, &bytes.Buffer{})
	require.NoError(t, err)
	o.started = started
	a := &inProcessAgent{sigs: make(chan os.Signal, 2), done: make(chan error, 1), logs: &testutil.Buffer{}}
	log, err := o.node.newLogger(a.logs)
	require.NoError(t, err)
	go func() { a.done <- o.run(log, func(string) string { return "" }, a.sigs) }()
	return a
}

// waitLog waits until the agent has logged a line containing s.
func (a *inProcessAgent) waitLog(t *testing.T, s string) {
	t.Helper()
	require.Eventually(t, func() bool { return strings.Contains(a.logs.String(), s) }, 10*time.Second, 5*time.Millisecond,
		"no log line with %q; logs:\n%s", s, a.logs.String())
}

// result waits for run to return.
func (a *inProcessAgent) result(t *testing.T, limit time.Duration) error {
	t.Helper()
	select {
	case err := <-a.done:
		return err
	case <-time.After(limit):
		t.Fatalf("the agent did not return within %v; logs:\n%s", limit, a.logs.String())
		return nil
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

func TestAgentJoinFailureNamesSeeds(t *testing.T) {
	seed1, seed2 := closedPort(t), closedPort(t)
	start := time.Now()
	a := startInProcess(t, []string{"-join", seed1 + "," + seed2, "-join-timeout", "300ms"}, nil)
	err := a.result(t, 10*time.Second)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "join seeds "+seed1+", "+seed2+": none reached within -join-timeout 300ms after")
	assert.Contains(t, err.Error(), "last error: aegis: join")
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Contains(t, a.logs.String(), `"msg":"join failed; retrying"`)
}

func TestAgentLeavesOnSignal(t *testing.T) {
	a := startInProcess(t, []string{"-name", "solo", "-serve", "echo"}, nil)
	a.waitLog(t, `"msg":"aegis agent started"`)
	logs := a.logs.String()
	assert.Contains(t, logs, `"node":"solo"`)
	assert.Contains(t, logs, `"instances":"echo/echo-solo"`)
	assert.Regexp(t, `"gossip":"127\.0\.0\.1:\d+","calls":"127\.0\.0\.1:\d+"`, logs)
	a.sigs <- syscall.SIGTERM
	require.NoError(t, a.result(t, 15*time.Second))
	assert.Contains(t, a.logs.String(), `"msg":"left the cluster"`)
}

func TestAgentSignalWhileJoining(t *testing.T) {
	a := startInProcess(t, []string{"-join", closedPort(t), "-join-timeout", "0"}, nil)
	a.waitLog(t, `"msg":"join failed; retrying"`)
	a.sigs <- syscall.SIGINT
	require.NoError(t, a.result(t, 15*time.Second))
	assert.Contains(t, a.logs.String(), `"msg":"left the cluster"`)
}

// TestAgentSecondSignal holds a call in flight so that the leave waits for
// it, then sends a second signal, which must end the agent at once.
func TestAgentSecondSignal(t *testing.T) {
	entered := make(chan struct{})
	var once sync.Once
	nodeCh := make(chan *aegis.Node, 1)
	a := startInProcess(t, []string{"-name", "held", "-leave-timeout", "30s"}, func(n *aegis.Node) {
		_, err := n.Register(context.Background(), aegis.Service{Name: "block", Handler: func(ctx context.Context, _ *aegis.Request) ([]byte, error) {
			once.Do(func() { close(entered) })
			<-ctx.Done()
			return nil, ctx.Err()
		}})
		assert.NoError(t, err)
		nodeCh <- n
	})
	agentNode := <-nodeCh

	cfg := aegis.DefaultConfig()
	cfg.Gossip = aegis.LocalGossip()
	client, err := aegis.New(cfg)
	require.NoError(t, err)
	defer func() { assert.NoError(t, client.Shutdown()) }()
	_, err = client.Join(context.Background(), agentNode.Addr())
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(client.HealthyInstances("block")) == 1 }, 10*time.Second, 5*time.Millisecond)
	callDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := client.Call(ctx, "block", "x", nil)
		callDone <- err
	}()
	<-entered

	a.sigs <- syscall.SIGTERM
	a.waitLog(t, `"msg":"leaving the cluster"`)
	start := time.Now()
	a.sigs <- syscall.SIGINT
	assert.ErrorIs(t, a.result(t, 10*time.Second), errForced)
	assert.Less(t, time.Since(start), forcedStopWait+2*time.Second)
	assert.Contains(t, a.logs.String(), `"msg":"second signal: stopping at once"`)
	assert.NotContains(t, a.logs.String(), `"msg":"left the cluster"`)

	// Let the cut-short leave finish before the leak check.
	require.NoError(t, agentNode.Shutdown())
	select {
	case <-callDone:
	case <-time.After(20 * time.Second):
		t.Fatal("the held call did not end")
	}
}
