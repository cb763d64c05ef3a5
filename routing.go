// This file holds routing: the Balancer interface, the built-in balancers,
// and the immutable per-service snapshots they pick from.

package aegis

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
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
func Random() Balancer { return &random{rng: newFastRand()} }

type random struct{ rng *fastRand }

func (b *random) Pick(req RouteRequest, healthy []Instance) (Instance, error) {
	n := len(healthy)
	if n == 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	i := below(b.rng.next(), n)
	if len(req.Exclude) == 0 {
		return healthy[i], nil
	}
	if j := scanFrom(req, healthy, i, -1); j >= 0 {
		return healthy[j], nil
	}
	return Instance{}, ErrNoHealthyInstances
}

// fastRand is the balancers' source of randomness: a Weyl sequence stepped
// atomically and scrambled by a 128-bit multiply (the wyrand construction).
// It costs a few nanoseconds where math/rand/v2's ChaCha8 costs about ten,
// and balancing needs spread, not unpredictability.
type fastRand struct {
	_ [56]byte // keep the hot word off its neighbours' cache line
	s atomic.Uint64
	_ [56]byte
}

func newFastRand() *fastRand {
	f := &fastRand{}
	f.s.Store(rand.Uint64())
	return f
}

func (f *fastRand) next() uint64 {
	x := f.s.Add(0xa0761d6478bd642f)
	hi, lo := bits.Mul64(x, x^0xe7037ed1a0b428db)
	return hi ^ lo
}

// below maps the low 32 bits of r onto [0, n) without a division.
func below(r uint64, n int) int { return int((r & 0xffffffff) * uint64(n) >> 32) }

// LeastLoaded returns a Balancer using the power of two choices: it draws
// two random instances and picks the one with fewer calls in flight from
// this node.
func LeastLoaded() Balancer { return &leastLoaded{rng: newFastRand()} }

type leastLoaded struct{ rng *fastRand }

func (b *leastLoaded) Pick(req RouteRequest, healthy []Instance) (Instance, error) {
	n := len(healthy)
	if n == 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	if n == 1 && len(req.Exclude) == 0 {
		return healthy[0], nil
	}
	// Two random indexes from one random number.
	r := b.rng.next()
	i, j := below(r, n), below(r>>32, n)
	if len(req.Exclude) == 0 {
		if j == i { // make them distinct
			if j++; j == n {
				j = 0
			}
		}
		if inflight(&healthy[i]) <= inflight(&healthy[j]) {
			return healthy[i], nil
		}
		return healthy[j], nil
	}
	first := scanFrom(req, healthy, i, -1)
	if first < 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	second := scanFrom(req, healthy, j, first)
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
// goes. The hash is the same in every process, so every node sends a key to
// the same instance. An excluded instance's keys go to the next instance on
// the ring. Calls without a key are spread at random.
func ConsistentHash() Balancer {
	return &consistentHash{rings: make(map[string]*[2]*hashRing), rng: newFastRand()}
}

type consistentHash struct {
	// slots caches rings by the address of the snapshot they were built
	// from, so the hot path finds its ring with one atomic load.
	slots [ringSlots]atomic.Pointer[hashRing]

	mu sync.Mutex
	// rings holds the two newest rings per service (a call may still hold
	// the previous snapshot while the next one is in use); guarded by mu.
	// A slot only ever holds a ring that is in rings.
	rings map[string]*[2]*hashRing
	rng   *fastRand
}

const (
	ringPoints   = 64
	ringSlotBits = 6
	ringSlots    = 1 << ringSlotBits
)

type hashRing struct {
	base   *Instance // identity of the snapshot it was built from
	n      int
	points []ringPoint // sorted by hash
	// lut[b] is the first point whose hash has top bits >= b (lutBits of
	// them). There are about as many buckets as points, so a lookup
	// compares with one or two points of its bucket.
	lut     []int32
	lutBits uint
}

type ringPoint struct {
	h   uint64
	idx int // index of the instance in the snapshot
}

func (b *consistentHash) Pick(req RouteRequest, healthy []Instance) (Instance, error) {
	n := len(healthy)
	if n == 0 || req.Key == "" || len(req.Exclude) != 0 {
		return b.pickSlow(req, healthy)
	}
	r := b.ringFor(req.Service, healthy)
	return healthy[r.points[r.pos(hashString(req.Key))].idx], nil
}

// ringFor returns the ring of healthy: from its cache slot in one atomic
// load, else through ringSlow.
func (b *consistentHash) ringFor(service string, healthy []Instance) *hashRing {
	r := b.slots[slotOf(healthy)].Load()
	if r == nil || r.base != unsafe.SliceData(healthy) || r.n != len(healthy) {
		r = b.ringSlow(service, healthy)
	}
	return r
}

// slotOf returns the cache slot of a snapshot, from its address.
func slotOf(healthy []Instance) uint64 {
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(healthy)))) * 0x9e3779b97f4a7c15 >> (64 - ringSlotBits)
}

// ringSlow returns the ring of healthy when it is not in its slot: from the
// service's recent rings, or newly built.
func (b *consistentHash) ringSlow(service string, healthy []Instance) *hashRing {
	base := unsafe.SliceData(healthy)
	b.mu.Lock()
	defer b.mu.Unlock()
	recent := b.rings[service]
	if recent == nil {
		recent = new([2]*hashRing)
		b.rings[service] = recent
	}
	var r *hashRing
	for _, c := range recent {
		if c != nil && c.base == base && c.n == len(healthy) {
			r = c
		}
	}
	if r == nil {
		r = buildRing(healthy)
		if old := recent[1]; old != nil {
			// Drop the oldest ring from the cache too, so that it does
			// not keep its snapshot alive.
			b.slots[slotOf(unsafe.Slice(old.base, old.n))].CompareAndSwap(old, nil)
		}
		recent[0], recent[1] = r, recent[0]
	}
	b.slots[slotOf(healthy)].Store(r)
	return r
}

// pos returns the position of the first point at or after h, wrapping past
// the last point to the first.
func (r *hashRing) pos(h uint64) int {
	bk := h >> (64 - r.lutBits)
	i, end := int(r.lut[bk]), int(r.lut[bk+1])
	for i < end && r.points[i].h < h {
		i++
	}
	if i == len(r.points) {
		return 0
	}
	return i
}

// pickSlow handles no instances, no key and exclusions.
func (b *consistentHash) pickSlow(req RouteRequest, healthy []Instance) (Instance, error) {
	if len(healthy) == 0 {
		return Instance{}, ErrNoHealthyInstances
	}
	if req.Key == "" {
		return (&random{rng: b.rng}).Pick(req, healthy)
	}
	r := b.ringFor(req.Service, healthy)
	i := r.pos(hashString(req.Key))
	for k := 0; k < len(r.points); k++ {
		inst := &healthy[r.points[i].idx]
		if _, ex := req.Exclude[inst.ID]; !ex {
			return *inst, nil
		}
		if i++; i == len(r.points) {
			i = 0
		}
	}
	return Instance{}, ErrNoHealthyInstances
}

func buildRing(healthy []Instance) *hashRing {
	pts := make([]ringPoint, 0, len(healthy)*ringPoints)
	for i, inst := range healthy {
		for p := 0; p < ringPoints; p++ {
			pts = append(pts, ringPoint{hashString(inst.ID + "#" + strconv.Itoa(p)), i})
		}
	}
	slices.SortFunc(pts, func(a, b ringPoint) int {
		switch {
		case a.h < b.h:
			return -1
		case a.h > b.h:
			return 1
		}
		return 0
	})
	r := &hashRing{base: unsafe.SliceData(healthy), n: len(healthy), points: pts}
	// About one point per bucket, between 16 and 65,536 buckets.
	r.lutBits = uint(min(16, max(4, bits.Len(uint(len(pts))))))
	buckets := 1 << r.lutBits
	r.lut = make([]int32, buckets+1)
	j := 0
	for b := 0; b <= buckets; b++ {
		for j < len(pts) && (b == buckets || pts[j].h>>(64-r.lutBits) < uint64(b)) {
			j++
		}
		r.lut[b] = int32(j)
	}
	return r
}

// hashString is a 64-bit string hash that reads eight bytes per step and
// mixes them with 128-bit multiplies. It has no per-process seed: every
// node must hash a key the same way. It reads bytes in little-endian order
// whatever the machine, for the same reason.
func hashString(s string) uint64 {
	const k0, k1, k2 = 0xa0761d6478bd642f, 0xe7037ed1a0b428db, 0x8ebc6af09c88c6e3
	h := uint64(len(s)) ^ k0
	for len(s) > 8 {
		h = mix64(binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(s), 8))^k1, h^k2)
		s = s[8:]
	}
	// The last 1 to 8 bytes, as two words that may overlap.
	var a, c uint64
	switch {
	case len(s) >= 4:
		a = uint64(binary.LittleEndian.Uint32(unsafe.Slice(unsafe.StringData(s), 4)))
		c = uint64(binary.LittleEndian.Uint32(unsafe.Slice(unsafe.StringData(s[len(s)-4:]), 4)))
	case len(s) > 0:
		a = uint64(s[0])<<16 | uint64(s[len(s)>>1])<<8 | uint64(s[len(s)-1])
	}
	h = mix64(a^k1, c^h)
	return mix64(h^k2, k0^uint64(len(s)))
}

// mix64 folds the 128-bit product of a and b into 64 bits.
func mix64(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// instLoad is this node's live view of calls to one instance; it is shared
// by every snapshot copy of the instance.
type instLoad struct {
	inflight    atomic.Int64
	consecFails atomic.Int32
	ejections   atomic.Int32 // mirrors entry.ejections for a lock-free check
	ejected     atomic.Bool  // mirrors !entry.ejectedUntil.IsZero()
	probing     atomic.Bool  // a liveness ping of its node is under way (see caller.suspect)
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
	routable []Instance // healthy, or degraded when none is healthy, and each role group's active; sorted by ID
	known    int        // instances known in any status
	// groups maps each role group of the service to its active (an empty
	// slice while it has none); nil when the service has no role members.
	groups map[string][]Instance
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
	byService := make(map[string][]*entry, len(s.stale))
	for svc := range s.stale {
		byService[svc] = nil
	}
	for k, e := range s.r.entries {
		if es, ok := byService[k.service]; ok {
			byService[k.service] = append(es, e)
		}
	}
	old := *s.m.Load()
	next := make(map[string]*serviceSnapshot, len(old)+len(byService))
	for k, v := range old {
		next[k] = v
	}
	for svc, es := range byService {
		if len(es) == 0 {
			delete(next, svc)
			continue
		}
		plain, groups := routable(es)
		next[svc] = &serviceSnapshot{routable: plain, known: len(es), groups: groups}
	}
	s.m.Store(&next)
	clear(s.stale)
	s.dirty.Store(false)
}

// routable returns what routing may pick among one service's instances,
// sorted by ID: of the ordinary peers (RoleNone), the healthy ones, or the
// degraded ones when none is healthy, minus the ejected ones unless that
// would leave none; and the active of each role group (see buildGroup),
// which groups also maps by group name. This is the one place that decides
// it (HealthyInstances returns the same set).
func routable(es []*entry) ([]Instance, map[string][]Instance) {
	var plain []*entry
	var actives map[groupKey]*entry
	for _, e := range es {
		if e.rec.Role == uint8(RoleNone) {
			plain = append(plain, e)
			continue
		}
		if actives == nil {
			actives = make(map[groupKey]*entry)
		}
		k := groupOf(&e.rec)
		cur, seen := actives[k]
		if !seen || servesAsActive(e) && (cur == nil || activeBeats(&e.rec, &cur.rec)) {
			if !servesAsActive(e) {
				e = nil
			}
			actives[k] = e
		}
	}
	out := routablePeers(plain)
	if actives == nil {
		return out, nil
	}
	groups := make(map[string][]Instance, len(actives))
	for k, a := range actives {
		if a == nil {
			groups[k.group] = []Instance{}
			continue
		}
		inst := a.instance()
		out = append(out, inst)
		groups[k.group] = []Instance{inst}
	}
	sortByID(out)
	return out, groups
}

// routablePeers is routable's choice among ordinary peers.
func routablePeers(es []*entry) []Instance {
	var healthy, degraded []*entry
	for _, e := range es {
		switch e.status {
		case StatusHealthy:
			healthy = append(healthy, e)
		case StatusDegraded:
			degraded = append(degraded, e)
		}
	}
	pool := healthy
	if len(pool) == 0 {
		pool = degraded
	}
	kept := make([]Instance, 0, len(pool))
	for _, e := range pool {
		if e.ejectedUntil.IsZero() {
			kept = append(kept, e.instance())
		}
	}
	if len(kept) == 0 {
		for _, e := range pool {
			kept = append(kept, e.instance())
		}
	}
	if len(kept) == 0 {
		return nil
	}
	sortByID(kept)
	return kept
}
