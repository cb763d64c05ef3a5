package aegisgrpc

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/aegisipc/aegis"
)

type fakeSubConn struct {
	balancer.SubConn
	id string
}

// buildPicker returns a picker over READY SubConns for ids (address
// "addr-ID") and the state they share.
func buildPicker(t *testing.T, st *clientState, ids ...string) (*picker, map[balancer.SubConn]string) {
	t.Helper()
	set := map[string]string{}
	ready := map[balancer.SubConn]base.SubConnInfo{}
	names := map[balancer.SubConn]string{}
	for _, id := range ids {
		set[id] = "addr-" + id
		sc := &fakeSubConn{id: id}
		names[sc] = id
		ready[sc] = base.SubConnInfo{Address: resolver.Address{Addr: "addr-" + id,
			Attributes: attributes.New(stateKey{}, st).WithValue(idKey{}, id)}}
	}
	st.live.Store(&liveSet{addrs: set})
	p, ok := pickerBuilder{}.Build(base.PickerBuildInfo{ReadySCs: ready}).(*picker)
	require.True(t, ok)
	return p, names
}

func pickID(t *testing.T, p *picker, ctx context.Context) string {
	t.Helper()
	res, err := p.Pick(balancer.PickInfo{FullMethodName: "/s/M", Ctx: ctx})
	require.NoError(t, err)
	return res.SubConn.(*fakeSubConn).id
}

func TestPickerSkipsInstancesThatLeftTheLiveSet(t *testing.T) {
	st := &clientState{service: "svc", balancer: aegis.RoundRobin()}
	p, _ := buildPicker(t, st, "a", "b", "c")
	seen := map[string]int{}
	for i := 0; i < 30; i++ {
		seen[pickID(t, p, context.Background())]++
	}
	require.Equal(t, map[string]int{"a": 10, "b": 10, "c": 10}, seen, "round robin")

	// An event removed b; this picker has not been replaced yet.
	st.live.Store(&liveSet{addrs: map[string]string{"a": "addr-a", "c": "addr-c"}})
	for i := 0; i < 30; i++ {
		require.NotEqual(t, "b", pickID(t, p, context.Background()))
	}
	// b re-registered at another address: the old connection is not it.
	st.live.Store(&liveSet{addrs: map[string]string{"b": "addr-b2"}})
	_, err := p.Pick(balancer.PickInfo{Ctx: context.Background()})
	require.ErrorIs(t, err, balancer.ErrNoSubConnAvailable, "wait for the next picker")
}

func TestPickerRetryPrefersAnotherInstance(t *testing.T) {
	st := &clientState{service: "svc", balancer: aegis.RoundRobin()}
	p, _ := buildPicker(t, st, "a", "b", "c")
	for i := 0; i < 20; i++ {
		ctx := withTried(context.Background())
		first := pickID(t, p, ctx)
		second := pickID(t, p, ctx)
		third := pickID(t, p, ctx)
		require.NotEqual(t, first, second)
		require.NotContains(t, []string{first, second}, third)
		pickID(t, p, ctx) // all tried: any instance rather than none
	}
}

func TestPickerConsistentHashIsSameAcrossClients(t *testing.T) {
	st1 := &clientState{service: "svc", balancer: aegis.ConsistentHash(), hashKey: "x-user"}
	st2 := &clientState{service: "svc", balancer: aegis.ConsistentHash(), hashKey: "x-user"}
	p1, _ := buildPicker(t, st1, "a", "b", "c")
	p2, _ := buildPicker(t, st2, "c", "b", "a")
	for u := 0; u < 50; u++ {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-user", string(rune('A'+u)))
		require.Equal(t, pickID(t, p1, ctx), pickID(t, p2, ctx))
		require.Equal(t, pickID(t, p1, ctx), pickID(t, p1, ctx))
	}
	// A retry of a keyed RPC goes to the next instance on the ring.
	ctx := withTried(metadata.AppendToOutgoingContext(context.Background(), "x-user", "k"))
	require.NotEqual(t, pickID(t, p1, ctx), pickID(t, p1, ctx))
}

// TestPickerConsistentHashWhileConnecting: keys are placed on the ring of
// every routable instance; while one is not READY its keys go to the next
// instance, and the other keys stay where they are.
func TestPickerConsistentHashWhileConnecting(t *testing.T) {
	st := &clientState{service: "svc", balancer: aegis.ConsistentHash(), hashKey: "x-user"}
	full, _ := buildPicker(t, st, "a", "b", "c")
	home := map[string]string{}
	for u := 0; u < 60; u++ {
		k := string(rune('A' + u))
		home[k] = pickID(t, full, metadata.AppendToOutgoingContext(context.Background(), "x-user", k))
	}
	partial, _ := buildPicker(t, st, "a", "b") // c routable but not READY
	st.live.Store(&liveSet{addrs: map[string]string{"a": "addr-a", "b": "addr-b", "c": "addr-c"}})
	partial.live = st.live.Load()
	partial.hashOverLive()
	slices.SortFunc(partial.insts, func(a, b aegis.Instance) int { return strings.Compare(a.ID, b.ID) })
	moved := 0
	for k, h := range home {
		got := pickID(t, partial, metadata.AppendToOutgoingContext(context.Background(), "x-user", k))
		require.NotEqual(t, "c", got)
		if h != "c" {
			require.Equal(t, h, got, "key %s moved though its instance is READY", k)
		} else {
			moved++
		}
	}
	require.Positive(t, moved)
}

func TestOutcome(t *testing.T) {
	cases := []struct {
		name      string
		di        balancer.DoneInfo
		ok, known bool
	}{
		{"success", balancer.DoneInfo{}, true, true},
		{"unavailable", balancer.DoneInfo{Err: status.Error(codes.Unavailable, "x")}, false, true},
		{"connection error", balancer.DoneInfo{Err: io.ErrUnexpectedEOF}, false, true},
		{"deadline before an answer", balancer.DoneInfo{Err: status.Error(codes.DeadlineExceeded, "x")}, false, true},
		{"deadline after an answer began", balancer.DoneInfo{Err: status.Error(codes.DeadlineExceeded, "x"), BytesReceived: true}, false, false},
		{"cancelled", balancer.DoneInfo{Err: status.Error(codes.Canceled, "x")}, false, false},
		{"context cancelled", balancer.DoneInfo{Err: context.Canceled}, false, false},
		{"application error", balancer.DoneInfo{Err: status.Error(codes.NotFound, "x")}, true, true},
		{"internal", balancer.DoneInfo{Err: status.Error(codes.Internal, "x")}, true, true},
		{"wrapped unavailable", balancer.DoneInfo{Err: errors.Join(status.Error(codes.Unavailable, "x"))}, false, true},
	}
	for _, c := range cases {
		ok, known := outcome(c.di)
		require.Equal(t, c.ok, ok, c.name)
		require.Equal(t, c.known, known, c.name)
	}
}

// TestReportClearsFailuresOnlyWhenNeeded: failures are reported; the
// success after a failure is reported and clears the count (three in a
// row eject).
func TestReportClearsFailuresOnlyWhenNeeded(t *testing.T) {
	node := newNode(t, 10*time.Second)
	register(t, node, "a", "127.0.0.1:1")
	register(t, node, "b", "127.0.0.1:2")
	st := &clientState{node: node, service: "svc"}
	flag := st.failedFlag("a")
	require.Same(t, flag, st.failedFlag("a"))
	fail := balancer.DoneInfo{Err: status.Error(codes.Unavailable, "x")}
	report(st, "a", flag, balancer.DoneInfo{}) // nothing to clear: not reported
	report(st, "a", flag, fail)
	report(st, "a", flag, fail)
	require.True(t, flag.Load())
	report(st, "a", flag, balancer.DoneInfo{})
	require.False(t, flag.Load())
	report(st, "a", flag, fail)
	report(st, "a", flag, fail)
	time.Sleep(50 * time.Millisecond)
	require.Len(t, node.HealthyInstances("svc"), 2, "the success cleared the count")
	report(st, "a", flag, fail)
	require.Eventually(t, func() bool { return len(node.HealthyInstances("svc")) == 1 }, 2*time.Second, 5*time.Millisecond)
}
