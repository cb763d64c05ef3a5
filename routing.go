package aegis

import (
	"slices"
	"strings"
	"sync/atomic"
)

// Balancer picks the instance for one call attempt.
//
// Pick is called concurrently from every calling goroutine and must not
// block. healthy is an immutable snapshot (never modify it) of the routable
// instances of req.Service, sorted by ID; instances in req.Exclude are still
// in it and must be skipped. When nothing can be picked, Pick returns an
// error wrapping ErrNoHealthyInstances.
type Balancer interface {
	Pick(req RouteRequest, healthy []Instance) (Instance, error)
}

// RouteRequest is what a Balancer knows about the call being routed.
type RouteRequest struct {
	Service, Method, Key string
	// Exclude holds instance IDs that must not be picked.
	Exclude map[string]struct{}
}

// RoundRobin returns a Balancer that cycles through the instances in ID
// order, skipping excluded ones.
func RoundRobin() Balancer { return &roundRobin{} }

type roundRobin struct{ next atomic.Uint64 }

func (b *roundRobin) Pick(req RouteRequest, healthy []Instance) (Instance, error) {
	n := len(healthy)
	if n == 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	start := b.next.Add(1) - 1
	for i := 0; i < n; i++ {
		inst := healthy[(start+uint64(i))%uint64(n)]
		if _, ex := req.Exclude[inst.ID]; !ex {
			return inst, nil
		}
	}
	return Instance{}, ErrNoHealthyInstances
}

// serviceSnapshot is the immutable routing view of one service.
type serviceSnapshot struct {
	routable []Instance // healthy, or degraded when none is healthy; sorted by ID
	known    int        // instances known in any status
}

// snapshots holds an immutable map from service name to its snapshot,
// replaced (copy on write) under the registry's lock and read lock-free.
type snapshots struct {
	m atomic.Pointer[map[string]*serviceSnapshot]
}

func newSnapshots() *snapshots {
	s := &snapshots{}
	empty := map[string]*serviceSnapshot{}
	s.m.Store(&empty)
	return s
}

// get returns the snapshot of service, or nil if no instance is known.
func (s *snapshots) get(service string) *serviceSnapshot {
	return (*s.m.Load())[service]
}

// update rebuilds the snapshot of service from entries. The caller holds
// the registry's write lock.
func (s *snapshots) update(entries map[instKey]*entry, service string) {
	snap := &serviceSnapshot{}
	var degraded []Instance
	for k, e := range entries {
		if k.service != service {
			continue
		}
		snap.known++
		switch e.status {
		case StatusHealthy:
			snap.routable = append(snap.routable, e.instance())
		case StatusDegraded:
			degraded = append(degraded, e.instance())
		}
	}
	if len(snap.routable) == 0 {
		snap.routable = degraded
	}
	slices.SortFunc(snap.routable, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	old := *s.m.Load()
	next := make(map[string]*serviceSnapshot, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	if snap.known == 0 {
		delete(next, service)
	} else {
		next[service] = snap
	}
	s.m.Store(&next)
}
