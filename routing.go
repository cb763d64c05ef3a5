package aegis

import (
	"math/bits"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"
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

// Random returns a Balancer that picks uniformly at random among the
// instances not excluded.
func Random() Balancer { return &random{} }

type random struct{}

func (*random) Pick(req RouteRequest, healthy []Instance) (Instance, error) {
	n := len(healthy)
	if n == 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	if len(req.Exclude) == 0 {
		return healthy[rand.IntN(n)], nil
	}
	if j := scanFrom(req, healthy, rand.IntN(n), -1); j >= 0 {
		return healthy[j], nil
	}
	return Instance{}, ErrNoHealthyInstances
}

// LeastLoaded returns a Balancer using the power of two choices: it draws
// two random instances and picks the one with fewer calls in flight from
// this node.
func LeastLoaded() Balancer { return &leastLoaded{} }

type leastLoaded struct{}

func (*leastLoaded) Pick(req RouteRequest, healthy []Instance) (Instance, error) {
	n := len(healthy)
	if n == 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	if len(req.Exclude) == 0 {
		// Two distinct random indexes from one random number.
		if n == 1 {
			return healthy[0], nil
		}
		r := rand.Uint64()
		i := int((r & 0xffffffff) * uint64(n) >> 32)
		j := int((r >> 32) * uint64(n-1) >> 32)
		if j >= i {
			j++
		}
		if inflight(&healthy[i]) <= inflight(&healthy[j]) {
			return healthy[i], nil
		}
		return healthy[j], nil
	}
	first := scanFrom(req, healthy, rand.IntN(n), -1)
	if first < 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	second := scanFrom(req, healthy, rand.IntN(n), first)
	if second < 0 || inflight(&healthy[first]) <= inflight(&healthy[second]) {
		return healthy[first], nil
	}
	return healthy[second], nil
}

// scanFrom returns the index of the first instance from start on (wrapping)
// that is neither excluded nor skip, or -1.
func scanFrom(req RouteRequest, healthy []Instance, start, skip int) int {
	n := len(healthy)
	for i := 0; i < n; i++ {
		j := (start + i) % n
		if j == skip {
			continue
		}
		if _, ex := req.Exclude[healthy[j].ID]; !ex {
			return j
		}
	}
	return -1
}

// ConsistentHash returns a Balancer that maps RouteRequest.Key onto a hash
// ring of the instances (64 points each), so that a key keeps going to the
// same instance and only about 1/N of keys move when an instance comes or
// goes. An excluded instance's keys go to the next instance on the ring.
// Calls without a key are spread at random.
func ConsistentHash() Balancer { return &consistentHash{} }

type consistentHash struct {
	ring atomic.Pointer[hashRing] // ring of the last snapshot seen
}

type hashRing struct {
	base   *Instance // identity of the snapshot it was built from
	n      int
	hashes []uint64
	idx    []int32
	// lut[b] is the first index whose hash has top bits >= b (lutBits of
	// them), so a lookup searches only its bucket: a few adjacent points
	// instead of a binary search over the whole ring.
	lut     []int32
	lutBits uint
}

const ringPoints = 64

func (b *consistentHash) Pick(req RouteRequest, healthy []Instance) (Instance, error) {
	n := len(healthy)
	if n == 0 || req.Key == "" || len(req.Exclude) != 0 {
		return b.pickSlow(req, healthy)
	}
	return healthy[b.ringFor(healthy).lookup(hashString(req.Key))], nil
}

// ringFor returns the ring of healthy, building it when the snapshot
// changed.
func (b *consistentHash) ringFor(healthy []Instance) *hashRing {
	r := b.ring.Load()
	if r == nil || r.base != unsafe.SliceData(healthy) || r.n != len(healthy) {
		r = buildRing(healthy)
		b.ring.Store(r)
	}
	return r
}

// lookup returns the instance index of the first point at or after h.
func (r *hashRing) lookup(h uint64) int { return int(r.idx[r.pos(h)]) }

// pos returns the position of the first point at or after h, wrapping past
// the last point to the first.
func (r *hashRing) pos(h uint64) int {
	bk := h >> (64 - r.lutBits)
	lo, hi := int(r.lut[bk]), int(r.lut[bk+1])
	p, _ := slices.BinarySearch(r.hashes[lo:hi], h)
	if i := lo + p; i < len(r.hashes) {
		return i
	}
	return 0
}

// pickSlow handles no instances, no key and exclusions.
func (b *consistentHash) pickSlow(req RouteRequest, healthy []Instance) (Instance, error) {
	if len(healthy) == 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	if req.Key == "" {
		return (&random{}).Pick(req, healthy)
	}
	r := b.ringFor(healthy)
	i := r.pos(hashString(req.Key))
	for k := 0; k < len(r.hashes); k++ {
		inst := &healthy[r.idx[i]]
		if _, ex := req.Exclude[inst.ID]; !ex {
			return *inst, nil
		}
		if i++; i == len(r.hashes) {
			i = 0
		}
	}
	return Instance{}, ErrNoHealthyInstances
}

func buildRing(healthy []Instance) *hashRing {
	type point struct {
		h   uint64
		idx int32
	}
	pts := make([]point, 0, len(healthy)*ringPoints)
	for i, inst := range healthy {
		for p := 0; p < ringPoints; p++ {
			pts = append(pts, point{hashString(inst.ID + "#" + strconv.Itoa(p)), int32(i)})
		}
	}
	slices.SortFunc(pts, func(a, b point) int {
		switch {
		case a.h < b.h:
			return -1
		case a.h > b.h:
			return 1
		}
		return 0
	})
	r := &hashRing{base: unsafe.SliceData(healthy), n: len(healthy), hashes: make([]uint64, len(pts)), idx: make([]int32, len(pts))}
	for i, p := range pts {
		r.hashes[i], r.idx[i] = p.h, p.idx
	}
	// About four points per bucket, between 16 and 4096 buckets.
	r.lutBits = uint(min(12, max(4, bits.Len(uint(len(pts)))-2)))
	buckets := 1 << r.lutBits
	r.lut = make([]int32, buckets+1)
	j := 0
	for b := 0; b <= buckets; b++ {
		for j < len(r.hashes) && (b == buckets || r.hashes[j]>>(64-r.lutBits) < uint64(b)) {
			j++
		}
		r.lut[b] = int32(j)
	}
	return r
}

// hashString is 64-bit FNV-1a followed by a finalizer that spreads the bits.
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return h
}

// instLoad is this node's live view of calls to one instance; it is shared
// by every snapshot copy of the instance.
type instLoad struct {
	inflight    atomic.Int64
	consecFails atomic.Int32
	ejections   atomic.Int32 // mirrors entry.ejections for a lock-free check
}

// InFlight returns how many calls this node has in flight to the instance.
func (i Instance) InFlight() int64 { return inflight(&i) }

// inflight is InFlight without copying the Instance.
func inflight(i *Instance) int64 {
	if i.load == nil {
		return 0
	}
	return i.load.inflight.Load()
}

// serviceSnapshot is the immutable routing view of one service.
type serviceSnapshot struct {
	routable []Instance // healthy, or degraded when none is healthy; sorted by ID
	known    int        // instances known in any status
}

// snapshots holds an immutable map from service name to its snapshot, read
// lock-free. Changes only mark a service stale (under the registry's
// lock); the next read rebuilds every stale service at once. A burst of
// changes (a hundred instances registering, a node failing) thus costs one
// rebuild instead of one per change, and none at all while nobody calls.
type snapshots struct {
	m     atomic.Pointer[map[string]*serviceSnapshot]
	dirty atomic.Bool // stale is not empty

	r     *registry           // whose lock guards stale and the rebuild
	stale map[string]struct{} // services to rebuild; guarded by r.mu
}

func newSnapshots(r *registry) *snapshots {
	s := &snapshots{r: r, stale: make(map[string]struct{})}
	empty := map[string]*serviceSnapshot{}
	s.m.Store(&empty)
	return s
}

// get returns the snapshot of service, or nil if no instance is known. It
// must not be called with the registry's lock held.
func (s *snapshots) get(service string) *serviceSnapshot {
	if s.dirty.Load() {
		s.flush()
	}
	return (*s.m.Load())[service]
}

// markStale marks service's snapshot for a rebuild on the next read. The
// caller holds the registry's write lock.
func (s *snapshots) markStale(service string) {
	s.stale[service] = struct{}{}
	s.dirty.Store(true)
}

// flush rebuilds the stale snapshots.
func (s *snapshots) flush() {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	if !s.dirty.Load() {
		return // another reader did it
	}
	built := make(map[string]*serviceSnapshot, len(s.stale))
	degraded := make(map[string][]Instance)
	for svc := range s.stale {
		built[svc] = &serviceSnapshot{}
	}
	for k, e := range s.r.entries {
		snap := built[k.service]
		if snap == nil {
			continue
		}
		snap.known++
		switch e.status {
		case StatusHealthy:
			snap.routable = append(snap.routable, e.instance())
		case StatusDegraded:
			degraded[k.service] = append(degraded[k.service], e.instance())
		}
	}
	old := *s.m.Load()
	next := make(map[string]*serviceSnapshot, len(old)+len(built))
	for k, v := range old {
		next[k] = v
	}
	for svc, snap := range built {
		if snap.known == 0 {
			delete(next, svc)
			continue
		}
		if len(snap.routable) == 0 {
			snap.routable = degraded[svc]
		}
		// Instances ejected by passive failure tracking leave the pool,
		// but never the last candidates.
		kept := snap.routable[:0:0]
		for _, in := range snap.routable {
			if e := s.r.entries[instKey{svc, in.ID}]; e == nil || e.ejectedUntil.IsZero() {
				kept = append(kept, in)
			}
		}
		if len(kept) > 0 {
			snap.routable = kept
		}
		slices.SortFunc(snap.routable, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
		next[svc] = snap
	}
	s.m.Store(&next)
	clear(s.stale)
	s.dirty.Store(false)
}

// eject removes an instance from this node's routing pool for a period that
// doubles with each consecutive ejection (base, 2×base, ... up to max).
func (r *registry) eject(k instKey, base, maxTime time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok || !e.ejectedUntil.IsZero() {
		return
	}
	now := r.clk.Now()
	d := base << min(e.ejections, 16)
	if d > maxTime || d <= 0 {
		d = maxTime
	}
	e.ejections++
	e.load.ejections.Store(int32(e.ejections))
	e.load.consecFails.Store(0)
	e.ejectedAt, e.ejectedUntil = now, now.Add(d)
	r.snaps.markStale(k.service)
	r.emit(Event{Type: EventEjected, Instance: e.instance(), OldStatus: e.status, NewStatus: e.status,
		Reason: "consecutive-failures", Time: now})
}

// callSucceeded clears the failure history of an instance after a call it
// answered.
func (r *registry) callSucceeded(k instKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.entries[k]; ok && e.ejectedUntil.IsZero() {
		e.ejections = 0
		e.load.ejections.Store(0)
	}
}

// reinstateLocked returns ejected instances to the pool once their period
// has passed and a heartbeat newer than the ejection has arrived (or at
// once, for instances that send no heartbeats). The next call decides: a
// success clears the history, a failure ejects again for twice as long.
func (r *registry) reinstateLocked(e *entry, now time.Time, threshold int) {
	if e.ejectedUntil.IsZero() || now.Before(e.ejectedUntil) {
		return
	}
	if e.rec.Heartbeats && !e.lastHeartbeat.After(e.ejectedAt) {
		return
	}
	e.ejectedUntil = time.Time{}
	e.load.consecFails.Store(int32(threshold - 1))
	r.snaps.markStale(e.rec.Service)
	r.emit(Event{Type: EventReinstated, Instance: e.instance(), OldStatus: e.status, NewStatus: e.status,
		Reason: "ejection-expired", Time: now})
}
