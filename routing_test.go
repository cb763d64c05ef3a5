package aegis

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func fakeInstances(n int) []Instance {
	out := make([]Instance, n)
	for i := range out {
		out[i] = Instance{Service: "svc", ID: fmt.Sprintf("i-%04d", i), load: &instLoad{}}
	}
	return out
}

func TestBalancersHonourExclusion(t *testing.T) {
	insts := fakeInstances(5)
	for name, b := range map[string]Balancer{"rr": RoundRobin(), "random": Random(), "least": LeastLoaded(), "hash": ConsistentHash()} {
		t.Run(name, func(t *testing.T) {
			ex := map[string]struct{}{"i-0001": {}, "i-0003": {}}
			for i := 0; i < 500; i++ {
				in, err := b.Pick(RouteRequest{Service: "svc", Key: strconv.Itoa(i), Exclude: ex}, insts)
				require.NoError(t, err)
				require.NotContains(t, ex, in.ID)
			}
			all := map[string]struct{}{}
			for _, in := range insts {
				all[in.ID] = struct{}{}
			}
			_, err := b.Pick(RouteRequest{Key: "k", Exclude: all}, insts)
			require.ErrorIs(t, err, ErrNoHealthyInstances)
			_, err = b.Pick(RouteRequest{Key: "k"}, nil)
			require.ErrorIs(t, err, ErrNoHealthyInstances)
		})
	}
}

func TestRoundRobinOrder(t *testing.T) {
	insts := fakeInstances(3)
	b := RoundRobin()
	counts := map[string]int{}
	for i := 0; i < 300; i++ {
		in, _ := b.Pick(RouteRequest{}, insts)
		counts[in.ID]++
	}
	for _, c := range counts {
		require.Equal(t, 100, c)
	}
}

func TestLeastLoadedPrefersIdle(t *testing.T) {
	insts := fakeInstances(2)
	insts[0].load.inflight.Store(10)
	b := LeastLoaded()
	for i := 0; i < 100; i++ {
		in, err := b.Pick(RouteRequest{}, insts)
		require.NoError(t, err)
		require.Equal(t, "i-0001", in.ID)
	}
}

func TestLeastLoadedSpreadsWhenEqual(t *testing.T) {
	insts := fakeInstances(3)
	b := LeastLoaded()
	count := map[string]int{}
	for i := 0; i < 3000; i++ {
		in, err := b.Pick(RouteRequest{}, insts)
		require.NoError(t, err)
		count[in.ID]++
	}
	require.Len(t, count, 3)
	for id, c := range count {
		require.Greater(t, c, 700, id)
	}
}

func TestConsistentHashMinimalMovement(t *testing.T) {
	b := ConsistentHash()
	before := fakeInstances(10)
	owner := map[string]string{}
	for k := 0; k < 5000; k++ {
		in, err := b.Pick(RouteRequest{Key: strconv.Itoa(k)}, before)
		require.NoError(t, err)
		owner[strconv.Itoa(k)] = in.ID
		again, _ := b.Pick(RouteRequest{Key: strconv.Itoa(k)}, before)
		require.Equal(t, in.ID, again.ID, "sticky")
	}
	// Remove one instance (a new snapshot): only its keys move.
	after := append(append([]Instance(nil), before[:4]...), before[5:]...)
	moved := 0
	for k, was := range owner {
		in, err := b.Pick(RouteRequest{Key: k}, after)
		require.NoError(t, err)
		if in.ID != was {
			moved++
			require.Equal(t, "i-0004", was, "a key of a surviving instance moved")
		}
	}
	require.InDelta(t, 500, moved, 250, "about 1/10 of keys move")
	// Excluding an instance sends its keys elsewhere, the rest stay.
	ex := map[string]struct{}{"i-0002": {}}
	for k, was := range owner {
		in, _ := b.Pick(RouteRequest{Key: k, Exclude: ex}, before)
		if was != "i-0002" {
			require.Equal(t, was, in.ID)
		}
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	insts := fakeInstances(100)
	for name, b := range map[string]Balancer{"rr": RoundRobin(), "random": Random(), "least": LeastLoaded(), "hash": ConsistentHash()} {
		req := RouteRequest{Service: "svc", Key: "user-42"}
		_, _ = b.Pick(req, insts) // builds the hash ring once
		allocs := testing.AllocsPerRun(1000, func() { _, _ = b.Pick(req, insts) })
		require.Zero(t, allocs, name)
	}
}

func BenchmarkPick(b *testing.B) {
	for _, bal := range []struct {
		name string
		b    Balancer
	}{{"RoundRobin", RoundRobin()}, {"Random", Random()}, {"LeastLoaded", LeastLoaded()}, {"ConsistentHash", ConsistentHash()}} {
		for _, n := range []int{1, 10, 100, 1000} {
			insts := fakeInstances(n)
			req := RouteRequest{Service: "svc", Key: "user-42"}
			_, _ = bal.b.Pick(req, insts)
			b.Run(fmt.Sprintf("%s/n=%d", bal.name, n), func(b *testing.B) {
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					_, _ = bal.b.Pick(req, insts)
				}
			})
			b.Run(fmt.Sprintf("%s/n=%d/parallel", bal.name, n), func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						_, _ = bal.b.Pick(req, insts)
					}
				})
			})
		}
	}
}
