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
	var got []string
	for i := 0; i < 7; i++ {
		in, err := b.Pick(RouteRequest{}, insts)
		require.NoError(t, err)
		got = append(got, in.ID)
	}
	want := []string{insts[0].ID, insts[1].ID, insts[2].ID, insts[0].ID, insts[1].ID, insts[2].ID, insts[0].ID}
	require.Equal(t, want, got, "cycles in ID order")

	// An excluded instance is skipped and the cycle goes on after it.
	ex := RouteRequest{Exclude: map[string]struct{}{insts[1].ID: {}}}
	got = got[:0]
	for i := 0; i < 4; i++ {
		in, err := b.Pick(ex, insts)
		require.NoError(t, err)
		got = append(got, in.ID)
	}
	require.Equal(t, []string{insts[2].ID, insts[2].ID, insts[0].ID, insts[2].ID}, got)
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

func TestConsistentHashBalance(t *testing.T) {
	insts := fakeInstances(10)
	b := ConsistentHash()
	count := map[string]int{}
	const keys = 50000
	for k := 0; k < keys; k++ {
		in, err := b.Pick(RouteRequest{Key: "user-" + strconv.Itoa(k)}, insts)
		require.NoError(t, err)
		count[in.ID]++
	}
	require.Len(t, count, 10)
	for id, c := range count {
		require.InDelta(t, keys/10, c, keys/20, "share of %s", id)
	}
}

// Every node must send a key to the same instance: two balancers (two
// nodes) over separately built snapshots agree on every key, and the hash
// is pinned so that it cannot change between versions by accident.
func TestConsistentHashSameOnEveryNode(t *testing.T) {
	a, b := ConsistentHash(), ConsistentHash()
	onA, onB := fakeInstances(7), fakeInstances(7)
	for k := 0; k < 2000; k++ {
		key := "order-" + strconv.Itoa(k)
		x, _ := a.Pick(RouteRequest{Key: key}, onA)
		y, _ := b.Pick(RouteRequest{Key: key}, onB)
		require.Equal(t, x.ID, y.ID, key)
	}
	for s, want := range map[string]uint64{
		"":                                     0x9a5177c020a3dfc0,
		"a":                                    0x1ec180de57a95fda,
		"user-42":                              0xf198137fcf2334e2,
		"i-0001#63":                            0x44ce876e85c292dc,
		"0b6c3f9e-3e1c-4c55-9a3a-6f2d1c2e9b10": 0x441a0077039dc818,
	} {
		require.Equal(t, want, hashString(s), "hashString(%q) = %#x", s, hashString(s))
	}
}

// One Balancer serves every service of a node: alternating services must
// neither rebuild rings nor allocate.
func TestConsistentHashManyServices(t *testing.T) {
	b := ConsistentHash()
	snaps := [][]Instance{fakeInstances(3), fakeInstances(10), fakeInstances(50)}
	names := []string{"a", "b", "c"}
	pick := func() {
		for i, s := range snaps {
			_, _ = b.Pick(RouteRequest{Service: names[i], Key: "k"}, s)
		}
	}
	pick()
	require.Zero(t, testing.AllocsPerRun(200, pick))
}

// BenchmarkPickManyKeys is ConsistentHash with a different key on every
// call (BenchmarkPick reuses one key, which keeps its ring point cached).
func BenchmarkPickManyKeys(b *testing.B) {
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = "user-" + strconv.Itoa(i*7919)
	}
	for _, n := range []int{10, 1000} {
		insts := fakeInstances(n)
		bal := ConsistentHash()
		_, _ = bal.Pick(RouteRequest{Service: "svc", Key: "k"}, insts)
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = bal.Pick(RouteRequest{Service: "svc", Key: keys[i&4095]}, insts)
			}
		})
	}
}
