// This file tests the built-in services, alone and served by a node.

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/runlog"
)

func TestParseServe(t *testing.T) {
	tests := []struct {
		items   []string
		want    []serveSpec
		wantErr string
	}{
		{nil, nil, ""},
		{[]string{"echo"}, []serveSpec{{"echo", "echo", aegis.RoleNone}}, ""},
		{[]string{"echo:svc", "fail:", "count:c.1"}, []serveSpec{{"echo", "svc", aegis.RoleNone}, {"fail", "fail", aegis.RoleNone}, {"count", "c.1", aegis.RoleNone}}, ""},
		{[]string{"echo:ledger:active", "count:jobs:standby"}, []serveSpec{{"echo", "ledger", aegis.RoleActive}, {"count", "jobs", aegis.RoleStandby}}, ""},
		{[]string{"echo:ledger:leader"}, nil, `unknown role "leader"`},
		{[]string{"bogus"}, nil, `unknown kind "bogus"`},
		{[]string{"echo", "count:echo"}, nil, `service "echo" is served twice`},
	}
	for _, tt := range tests {
		got, err := parseServe(tt.items)
		if tt.wantErr != "" {
			assert.ErrorContains(t, err, tt.wantErr, "%v", tt.items)
			continue
		}
		require.NoError(t, err, "%v", tt.items)
		assert.Equal(t, tt.want, got, "%v", tt.items)
	}
}

func TestBuiltinHandlers(t *testing.T) {
	ctx := context.Background()
	req := func(method, payload string) *aegis.Request {
		return &aegis.Request{Service: "svc", Method: method, Payload: []byte(payload)}
	}
	handler := func(kindName string) (aegis.Handler, *instance) {
		k, ok := kindNamed(kindName)
		require.True(t, ok)
		in := &instance{service: "svc", id: "svc-n1", node: "n1"}
		return in.handler(k), in
	}
	tests := []struct {
		kind, method, payload string
		want                  string // exact answer; "" with wantErr
		wantErr               string
	}{
		{"echo", "anything", "hello", "hello", ""},
		{"echo", "whoami", "hello", `{"instance":"svc-n1","node":"n1","service":"svc"}`, ""},
		{"sleep", "x", "1ms", "1ms", ""},
		{"sleep", "x", "0s", "0s", ""},
		{"sleep", "x", "soon", "", `payload "soon" is not a non-negative Go duration`},
		{"sleep", "x", "-1s", "", "not a non-negative"},
		{"sleep", "whoami", "10m", `{"instance":"svc-n1","node":"n1","service":"svc"}`, ""},
		{"fail", "x", "", "", `fail: instance svc-n1 failed method "x"`},
		{"fail", "whoami", "", `{"instance":"svc-n1","node":"n1","service":"svc"}`, ""},
		{"count", "x", "", `{"instance":"svc-n1","node":"n1","service":"svc","count":1}`, ""},
		{"count", "whoami", "", `{"instance":"svc-n1","node":"n1","service":"svc"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.kind+"/"+tt.method+"/"+tt.payload, func(t *testing.T) {
			h, _ := handler(tt.kind)
			out, err := h(ctx, req(tt.method, tt.payload))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				var re *aegis.RemoteError
				assert.False(t, errors.As(err, &re), "a plain error, so not retryable")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, string(out))
		})
	}

	t.Run("count counts every run", func(t *testing.T) {
		h, in := handler("count")
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				_, err := h(ctx, req("x", ""))
				assert.NoError(t, err)
			})
		}
		wg.Wait()
		out, err := h(ctx, req("x", ""))
		require.NoError(t, err)
		var id identity
		require.NoError(t, json.Unmarshal(out, &id))
		assert.EqualValues(t, 51, id.Count)
		assert.EqualValues(t, 51, in.runs.Load())
		_, err = h(ctx, req("whoami", ""))
		require.NoError(t, err)
		assert.EqualValues(t, 51, in.runs.Load(), "whoami is not counted")
	})

	t.Run("sleep honours the context", func(t *testing.T) {
		h, _ := handler("sleep")
		ctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := h(ctx, req("x", "1h"))
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), 10*time.Second)
	})
}

// TestServicesOnNode serves every kind from a node on loopback and calls
// each through the library.
func TestServicesOnNode(t *testing.T) {
	node := loopbackNode(t)
	specs, err := parseServe([]string{"echo", "sleep:slow", "fail", "count:cnt"})
	require.NoError(t, err)
	regs, err := registerServices(context.Background(), node, specs, "", nil, roleFlags{})
	require.NoError(t, err)
	require.Len(t, regs, 4)
	assert.Equal(t, "slow-n1", regs[1].Instance().ID)
	assert.Equal(t, "sleep", regs[1].Instance().Metadata["kind"])

	ctx := context.Background()
	out, err := node.CallWithFailover(ctx, "echo", "any", []byte("hi"))
	require.NoError(t, err)
	assert.Equal(t, "hi", string(out))

	out, err = node.CallWithFailover(ctx, "cnt", "whoami", nil)
	require.NoError(t, err)
	assert.Equal(t, "cnt-n1", answeringInstance(out))

	out, err = node.CallWithFailover(ctx, "slow", "x", []byte("5ms"))
	require.NoError(t, err)
	assert.Equal(t, "5ms", string(out))
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = node.CallWithFailover(short, "slow", "x", []byte("1m"))
	assert.ErrorIs(t, err, aegis.ErrTimeout)

	_, err = node.CallWithFailover(ctx, "fail", "x", nil)
	var re *aegis.RemoteError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, aegis.CodeHandler, re.Code)
	assert.False(t, re.Retryable)

	t.Run("instance ID given", func(t *testing.T) {
		specs, err := parseServe([]string{"echo:other"})
		require.NoError(t, err)
		regs, err := registerServices(ctx, node, specs, "fixed-id", nil, roleFlags{})
		require.NoError(t, err)
		assert.Equal(t, "fixed-id", regs[0].Instance().ID)
	})
	t.Run("duplicate instance", func(t *testing.T) {
		_, err := registerServices(ctx, node, specs[:1], "", nil, roleFlags{})
		assert.ErrorIs(t, err, aegis.ErrDuplicateInstance)
		assert.ErrorContains(t, err, `serve echo as service "echo"`)
	})
}

// TestCountRecordsRuns serves the count kind writing its runs down, calls
// it with message IDs of the caller's choosing and checks the records
// against the calls; method once is non-idempotent.
func TestCountRecordsRuns(t *testing.T) {
	node := loopbackNode(t)
	path := filepath.Join(t.TempDir(), "runs")
	record, err := runlog.Create(path)
	require.NoError(t, err)
	specs, err := parseServe([]string{"count"})
	require.NoError(t, err)
	regs, err := registerServices(context.Background(), node, specs, "", record, roleFlags{})
	require.NoError(t, err)
	assert.Equal(t, []string{onceMethod}, regs[0].Instance().NonIdempotent)

	ctx := context.Background()
	var calls []runlog.Call
	for i, method := range []string{"inc", onceMethod, "inc", whoamiMethod} {
		c := runlog.Call{MessageID: fmt.Sprintf("m%d", i), Method: method}
		out, err := node.CallWithFailover(ctx, "count", method, nil, aegis.WithMessageID(c.MessageID))
		require.NoError(t, err)
		c.Instance, c.Run = answeringInstance(out), answerCount(out)
		calls = append(calls, c)
	}
	// A retry under the same message ID is answered from the dedup cache.
	_, err = node.Call(ctx, "count", "inc", nil, aegis.WithMessageID("m0"))
	require.NoError(t, err)
	require.NoError(t, record.Close())

	runs, err := runlog.Read[runlog.Run](path)
	require.NoError(t, err)
	assert.Equal(t, []runlog.Run{
		{Instance: "count-n1", Run: 1, Method: "inc", MessageID: "m0"},
		{Instance: "count-n1", Run: 2, Method: onceMethod, MessageID: "m1"},
		{Instance: "count-n1", Run: 3, Method: "inc", MessageID: "m2"},
	}, runs, "whoami is not a run, nor a deduplicated retry")
	r := runlog.Check(calls[:3], runs, runlog.Bounds{NonIdempotent: func(m string) bool { return m == onceMethod }, PerInstance: 1})
	assert.True(t, r.OK(), "%s: %v", r, r.Problems)
}

// loopbackNode starts node n1 on loopback, shut down when the test ends.
func loopbackNode(t *testing.T) *aegis.Node {
	t.Helper()
	cfg := aegis.DefaultConfig()
	cfg.NodeName = "n1"
	cfg.Gossip = aegis.LocalGossip()
	node, err := aegis.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, node.Shutdown()) })
	return node
}
