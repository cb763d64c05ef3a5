// This file holds the public types of service instances and registration
// (Service, Instance, Registration, Status, Role) and the registry: this
// node's replicated view of every instance, merged from gossip.

package aegis

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis/internal/clock"
	"github.com/aegisipc/aegis/internal/dedup"
	"github.com/aegisipc/aegis/internal/rpc"
	"github.com/aegisipc/aegis/internal/wire"
)

// Status is an instance's health as this node sees it.
type Status int

// Instance statuses.
const (
	// StatusHealthy: fresh heartbeats, ready for calls.
	StatusHealthy Status = iota
	// StatusDegraded: self-reported; picked only when no healthy instance
	// exists.
	StatusDegraded
	// StatusUnhealthy: self-reported, heartbeat timed out, or its node
	// failed. Never picked.
	StatusUnhealthy
	// StatusDraining: the instance is finishing in-flight calls before it
	// leaves. Never picked.
	StatusDraining
)

// String returns "healthy", "degraded", "unhealthy" or "draining".
func (s Status) String() string {
	switch s {
	case StatusHealthy:
		return "healthy"
	case StatusDegraded:
		return "degraded"
	case StatusUnhealthy:
		return "unhealthy"
	case StatusDraining:
		return "draining"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// Role is an instance's part in active/standby setups.
type Role int

// Instance roles.
const (
	RoleNone Role = iota
	RoleActive
	RoleStandby
)

// String returns "none", "active" or "standby".
func (r Role) String() string {
	switch r {
	case RoleNone:
		return "none"
	case RoleActive:
		return "active"
	case RoleStandby:
		return "standby"
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// Handler serves the calls made to one service instance. It is called
// concurrently, once per call, and should return when ctx ends.
type Handler func(ctx context.Context, req *Request) ([]byte, error)

// Request is one call as a Handler sees it.
type Request struct {
	Service, Method, InstanceID, MessageID string
	Payload                                []byte
	Header                                 map[string]string
	// Epoch is the role group's epoch at which this instance became
	// active, for calls to a role group's active (0 otherwise): a fencing
	// token. Pass it to the stores the handler writes to, or check it with
	// an EpochFence, so that a stale active's late writes are refused.
	Epoch uint64
}

// Service describes an instance to register.
//
// Naming rules: Name is 1-128 characters of letters, digits, '.', '_', '-';
// InstanceID (generated when empty) is 1-128 characters of the same set plus
// ':'. Metadata keys follow the Name rule; the whole record (names, address
// and metadata) must encode to at most MaxRecordSize bytes so that it fits
// one gossip packet.
type Service struct {
	Name       string
	InstanceID string
	Metadata   map[string]string
	Handler    Handler
	// NonIdempotent names methods that must not be re-run on another
	// instance once this one may have started them (a transfer, an email).
	// CallWithFailover moves such a call elsewhere only when the request
	// provably never reached the first instance (connection refused,
	// instance unknown or draining); otherwise it retries the same instance
	// with the same message ID, where deduplication makes the handler run
	// once. Methods not listed are idempotent, the default: after a lost
	// connection or a timeout they may also fail over to another instance.
	NonIdempotent []string

	// Role makes the instance a member of an active/standby role group:
	// calls to the group go only to its one active, and when the active
	// becomes unhealthy (node failed, heartbeat timeout, self-reported
	// unhealthy, draining, deregistered) the first healthy standby in
	// promotion order is promoted, chosen the same way by every node.
	// RoleNone (the default) is an ordinary peer. Registering RoleActive
	// while the group has a healthy active fails with ErrRoleConflict;
	// register standbys and let promotion choose, or register one active.
	// A group without an active promotes a standby that has been
	// registered for at least Config.RoleLeaseTimeout (younger ones may
	// not know their group yet), so register the intended active first
	// (see also GroupSize).
	// See PromotionMode for what happens under partitions.
	// Group narrows the role group within the service (default: the
	// service itself is the group); it follows the service-name rule.
	// Priority orders standbys for promotion (higher first; then earlier
	// registration, then instance ID). Promotion is the group's
	// PromotionMode (default PromoteWithMajority); all members of a group
	// should use the same.
	Role      Role
	Group     string
	Priority  int
	Promotion PromotionMode
	// GroupSize, under PromoteWithMajority, is how many members the role
	// group is meant to have: majorities are counted over at least this
	// many, so a node cut off with fewer members than a majority of it
	// can neither promote nor keep an active, even if it knows only
	// itself. 0 (the default) counts over the members this node knows,
	// which is safe once the group has formed (every member has seen the
	// others) but not for a member that registers while cut off; set it to
	// the group's intended size for full safety. With GroupSize 0, a group
	// that has never had an active promotes nobody: register its first
	// active with RoleActive.
	GroupSize int

	// Endpoints advertises addresses the instance serves other protocols
	// on, by protocol name, for clients that discover instances through
	// Aegis but call them with their own RPC (the integrations resolve
	// "grpc" and "http"): e.g. {"grpc": "10.0.0.5:50051", "http":
	// "http://10.0.0.5:8080"}. At most 16; names follow the metadata key
	// rule up to 32 bytes, addresses are 1-256 bytes of printable ASCII
	// without spaces; they count toward MaxRecordSize. An instance with
	// Endpoints may have no Handler (discovery and health only); Aegis
	// calls to it then fail with CodeNoHandler.
	Endpoints map[string]string
}

// MaxRecordSize is the largest encoded instance record (names, address,
// metadata) Register accepts. Records travel in UDP gossip packets of about
// 1,400 bytes.
const MaxRecordSize = 1024

// Instance is a copy of what this node knows about one service instance.
type Instance struct {
	Service, ID, Node, Addr string
	Role                    Role
	Status                  Status
	Metadata                map[string]string
	// RegisteredAt is the registering node's clock at registration.
	RegisteredAt time.Time
	// LastHeartbeat is this node's clock when it received the newest
	// heartbeat (or first learned of the instance).
	LastHeartbeat time.Time
	// NonIdempotent lists the methods the instance declared not safe to
	// re-run elsewhere (see Service.NonIdempotent).
	NonIdempotent []string
	// Group, Priority and Promotion are the role group settings of a member
	// (Role not RoleNone; Group is then the service name when it was not
	// set); Epoch is the group's epoch at which the instance last became
	// active (0: never).
	Group     string
	Priority  int
	Promotion PromotionMode
	Epoch     uint64
	// Endpoints are the other protocols' addresses the instance advertised
	// (Service.Endpoints).
	Endpoints map[string]string
	// Ejected says this node's passive failure tracking keeps the instance
	// out of its routing for now (EventEjected): HealthyInstances leaves
	// it out unless every candidate is ejected.
	Ejected bool

	load *instLoad // this node's in-flight calls and failures; nil in copies made by users
}

type instKey struct{ service, id string }

func (k instKey) String() string { return k.service + "/" + k.id }

// maxNameLen is the longest service name, instance ID, node name or
// metadata key.
const maxNameLen = wire.MaxNameLen

// validName reports whether s is 1..maxLen characters of [A-Za-z0-9._-:],
// the rule every node applies to names it receives.
func validName(s string, maxLen int) bool { return wire.ValidName(s, maxLen) }

func validateService(svc *Service) error {
	if !validName(svc.Name, maxNameLen) || strings.Contains(svc.Name, ":") {
		return fmt.Errorf("%w: service name %q: use 1-128 letters, digits, '.', '_' or '-'", ErrInvalidName, svc.Name)
	}
	if svc.InstanceID != "" && !validName(svc.InstanceID, maxNameLen) {
		return fmt.Errorf("%w: instance ID %q: use 1-128 letters, digits, '.', '_', '-' or ':'", ErrInvalidName, svc.InstanceID)
	}
	for k := range svc.Metadata {
		if !validName(k, maxNameLen) {
			return fmt.Errorf("%w: metadata key %q: use 1-128 letters, digits, '.', '_', '-' or ':'", ErrInvalidName, k)
		}
	}
	if svc.Role < RoleNone || svc.Role > RoleStandby {
		return fmt.Errorf("%w: role %d is not a Role", ErrInvalidService, svc.Role)
	}
	if svc.Promotion < PromoteWithMajority || svc.Promotion > PromoteAlways {
		return fmt.Errorf("%w: promotion mode %d is not a PromotionMode", ErrInvalidService, svc.Promotion)
	}
	if svc.Group != "" && (!validName(svc.Group, maxNameLen) || strings.Contains(svc.Group, ":")) {
		return fmt.Errorf("%w: role group %q: use 1-128 letters, digits, '.', '_' or '-'", ErrInvalidName, svc.Group)
	}
	if svc.Priority < math.MinInt32 || svc.Priority > math.MaxInt32 {
		return fmt.Errorf("%w: priority %d is outside the 32-bit range", ErrInvalidService, svc.Priority)
	}
	if svc.GroupSize < 0 || svc.GroupSize > 1000 {
		return fmt.Errorf("%w: group size %d is not 0 to 1000", ErrInvalidService, svc.GroupSize)
	}
	if svc.Role == RoleNone && (svc.Group != "" || svc.Priority != 0 || svc.Promotion != PromoteWithMajority || svc.GroupSize != 0) {
		return fmt.Errorf("%w: service %q sets Group, Priority or Promotion without a Role", ErrInvalidService, svc.Name)
	}
	if svc.Handler == nil && len(svc.Endpoints) == 0 {
		return fmt.Errorf("%w: service %q has a nil Handler and no Endpoints", ErrInvalidService, svc.Name)
	}
	if err := wire.CheckEndpoints(svc.Endpoints); err != nil {
		return fmt.Errorf("%w: service %q: %w", ErrInvalidService, svc.Name, err)
	}
	return nil
}

// Registration is a local instance registered with Register.
type Registration struct {
	n        *Node
	key      instKey
	svc      Service
	status   atomic.Int32               // self-reported Status
	inflight atomic.Int64               // calls running in the handler
	draining atomic.Bool                // someone waits in waitIdle
	idle     chan struct{}              // capacity 1; signalled when inflight drops to 0 while draining
	dedup    *dedup.Cache[rpc.Response] // outcomes by message ID; nil when disabled
	paused   atomic.Bool                // heartbeats paused
	done     atomic.Bool                // deregistered or node stopped
	regTime  time.Time
	group    groupKey  // its role group, when svc.Role is not RoleNone
	role     roleState // its part in the group, decided by this node
}

// callStarted and callFinished bracket a call running on the instance.
func (r *Registration) callStarted() { r.inflight.Add(1) }

func (r *Registration) callFinished() {
	if r.inflight.Add(-1) == 0 && r.draining.Load() {
		select {
		case r.idle <- struct{}{}:
		default:
		}
	}
}

// waitIdle waits until no call runs on the instance, or ctx ends. The
// caller has made sure no new calls start (status draining).
func (r *Registration) waitIdle(ctx context.Context) error {
	r.draining.Store(true)
	for r.inflight.Load() > 0 {
		select {
		case <-r.idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Register registers a local instance of svc, gossips it to the cluster and
// starts its heartbeats. It returns ErrDuplicateInstance if an instance with
// the same service name and ID is already known, ErrInvalidName for names
// breaking the rules on Service, ErrInvalidService for a nil Handler or an
// unknown Role (or neither a Handler nor Endpoints), ErrRecordTooLarge when the record would not fit a gossip
// packet, and ErrShutdown once the node is leaving.
func (n *Node) Register(ctx context.Context, svc Service) (*Registration, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := validateService(&svc); err != nil {
		return nil, err
	}
	if svc.InstanceID == "" {
		svc.InstanceID = svc.Name + "-" + randomHex(6)
	}
	svc.Metadata = copyMeta(svc.Metadata)
	svc.Endpoints = copyMeta(svc.Endpoints)
	svc.NonIdempotent = slices.Clone(svc.NonIdempotent)
	key := instKey{svc.Name, svc.InstanceID}

	r, err := n.register(key, svc)
	if err != nil {
		return nil, err
	}
	n.log.Info("registered instance", "service", svc.Name, "instance", svc.InstanceID)
	// The record just announced counts as the first heartbeat everywhere:
	// no round here, so registering stays O(1) however many instances run.
	if svc.Role != RoleNone {
		n.kickRoles()
	}
	return r, nil
}

// register stores and announces a new local instance. It takes n.mu.
func (n *Node) register(key instKey, svc Service) (*Registration, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state.Load() != stateRunning {
		return nil, ErrShutdown
	}
	if _, ok := n.local[key]; ok {
		return nil, fmt.Errorf("%w: %s is already registered on this node", ErrDuplicateInstance, key)
	}
	now := n.clk.Now()
	rec := wire.Record{
		Service: svc.Name, ID: svc.InstanceID, Node: n.name, Addr: n.tr.CallAddr(),
		Role: uint8(svc.Role), Status: uint8(StatusHealthy), Meta: svc.Metadata,
		Incarnation: now.UnixNano(), Time: now.UnixNano(), Heartbeats: n.cfg.HeartbeatEnabled,
		NonIdempotent: svc.NonIdempotent, Group: svc.Group, Priority: int32(svc.Priority), Promotion: uint8(svc.Promotion),
		Endpoints: svc.Endpoints, Life: n.life, Index: n.newIndex(),
	}
	if svc.Role == RoleActive {
		g, ok := n.reg.group(groupOf(&rec))
		if ok && g.active != nil {
			return nil, fmt.Errorf("%w: %s has active %s (node %s, epoch %d); register %s as RoleStandby",
				ErrRoleConflict, g.key, g.active.ID, g.active.Node, g.active.Epoch, key)
		}
		rec.Epoch = g.epoch + 1
	}
	if err := n.reg.reserveLocal(&rec); err != nil {
		return nil, err
	}
	msg, err := wire.Encode(&rec)
	switch {
	case err != nil:
	case len(msg) > MaxRecordSize:
		err = fmt.Errorf("%w: instance %s encodes to %d bytes, more than MaxRecordSize (%d); shorten its metadata", ErrRecordTooLarge, key, len(msg), MaxRecordSize)
	default:
		// What peers would refuse to store (too many metadata entries,
		// a value over 512 bytes, too many non-idempotent methods).
		if verr := rec.Validate(wire.DefaultLimits()); verr != nil {
			err = fmt.Errorf("%w: instance %s: %w", ErrInvalidService, key, verr)
		}
	}
	if err != nil {
		n.reg.releaseLocal(key)
		return nil, err
	}
	r := &Registration{n: n, key: key, svc: svc, regTime: time.Unix(0, rec.Incarnation), idle: make(chan struct{}, 1),
		group: groupOf(&rec)}
	r.role.cur.Store(int32(svc.Role))
	r.role.epoch.Store(rec.Epoch)
	r.role.activeSince = now
	if n.cfg.DedupMaxEntries > 0 {
		r.dedup = dedup.New[rpc.Response](n.clk, n.cfg.DedupWindow, n.cfg.DedupMaxEntries, n.cfg.DedupMaxBytes, responseSize, n.dedupEvicted)
	}
	n.local[key] = r
	n.server.add(key, r)
	n.reg.commitLocal(&rec)
	n.gossip.announce(recordName(key), msg)
	return r, nil
}

// recordName names an instance's record in the broadcast queue: a newer
// message about the instance replaces an older one still queued.
func recordName(k instKey) string { return "r:" + k.String() }

// Deregister removes the instance from the cluster and stops its
// heartbeats; peers see EventDeregistered with reason "deregistered". When
// calls are running on the instance, it first marks it draining (peers stop
// routing to it) and waits until they finish or ctx ends; it then removes
// the instance either way, returning ctx's error if calls were cut short.
// It is idempotent.
func (r *Registration) Deregister(ctx context.Context) error {
	var err error
	if r.inflight.Load() > 0 && !r.done.Load() {
		r.status.Store(int32(StatusDraining))
		r.n.heartbeatRound(gossipAndDirect)
		if err = r.waitIdle(ctx); err != nil {
			err = fmt.Errorf("aegis: deregister %s: in-flight calls cut short: %w", r.key, err)
		}
	}
	r.n.deregister(r, "deregistered")
	return err
}

func (n *Node) deregister(r *Registration, reason string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if cur, ok := n.local[r.key]; !ok || cur != r {
		return
	}
	delete(n.local, r.key)
	n.server.remove(r.key, r)
	r.done.Store(true)
	if tomb, ok := n.reg.tombstoneLocal(r.key, reason); ok {
		if msg, err := wire.Encode(&tomb); err == nil {
			n.gossip.announceTombstone(recordName(r.key), msg)
		}
	}
	n.log.Info("deregistered instance", "service", r.key.service, "instance", r.key.id, "reason", reason)
}

// SetStatus sets the instance's self-reported status. It is sent at once in
// an extra heartbeat and carried by every later one; peers honour it.
// StatusUnhealthy and StatusDraining take the instance out of routing,
// StatusDegraded makes it a last resort.
func (r *Registration) SetStatus(s Status) {
	if s < StatusHealthy || s > StatusDraining {
		panic(fmt.Sprintf("aegis: SetStatus(%d): not a Status", int(s)))
	}
	if Status(r.status.Swap(int32(s))) == s {
		return
	}
	r.n.heartbeatRound(gossipAndDirect)
}

// PauseHeartbeats stops this instance's heartbeats while its node stays up,
// as if the instance hung: after HeartbeatTimeout every node marks it
// unhealthy. For tests, demos, and applications that detect they are wedged.
func (r *Registration) PauseHeartbeats() { r.paused.Store(true) }

// ResumeHeartbeats undoes PauseHeartbeats and sends a heartbeat at once.
func (r *Registration) ResumeHeartbeats() {
	if r.paused.Swap(false) {
		r.n.heartbeatRound(gossipAndDirect)
	}
}

// Instance returns this node's current view of the registered instance.
func (r *Registration) Instance() Instance {
	if inst, ok := r.n.reg.get(r.key); ok {
		return inst
	}
	return Instance{
		Service: r.svc.Name, ID: r.svc.InstanceID, Node: r.n.name, Addr: r.n.tr.CallAddr(),
		Role: Role(r.role.cur.Load()), Status: StatusUnhealthy, Metadata: copyMeta(r.svc.Metadata), RegisteredAt: r.regTime,
	}
}

// Services returns the names of all services with at least one known
// instance, sorted.
func (n *Node) Services() []string { return n.reg.services() }

// Instances returns copies of every instance of service this node knows,
// in any status (unhealthy ones stay until ReapTimeout removes them),
// sorted by instance ID.
func (n *Node) Instances(service string) []Instance { return n.reg.instances(service) }

// HealthyInstances returns copies of exactly the instances routing may pick
// now, sorted by instance ID: the healthy ones, or, when none is healthy,
// the degraded ones; minus those this node's passive failure tracking has
// ejected (EventEjected), unless that would leave none. Calls also skip the
// instances they exclude (WithExclude, and the ones a CallWithFailover has
// already tried).
func (n *Node) HealthyInstances(service string) []Instance {
	snap := n.reg.snaps.get(service)
	if snap == nil {
		return nil
	}
	out := slices.Clone(snap.routable)
	for i := range out {
		out[i].Metadata = copyMeta(out[i].Metadata)
	}
	return out
}

// entry is the local state of one known instance.
type entry struct {
	rec           wire.Record
	lastHeartbeat time.Time // local clock
	timedOut      bool      // heartbeat older than the timeout
	nodeFailed    bool      // memberlist declared its node dead
	status        Status    // effective status, as last reported in events
	badSince      time.Time // when timedOut or nodeFailed became true
	load          *instLoad // shared with every Instance copy

	// passive failure tracking (this node only)
	ejectedUntil time.Time // non-zero while ejected from routing
	ejectedAt    time.Time
	ejections    int // consecutive ejections without a successful call
}

func (e *entry) effective() Status {
	if e.timedOut || e.nodeFailed {
		return StatusUnhealthy
	}
	return Status(e.rec.Status)
}

func (e *entry) instance() Instance {
	inst := Instance{
		Service: e.rec.Service, ID: e.rec.ID, Node: e.rec.Node, Addr: e.rec.Addr,
		Role: Role(e.rec.Role), Status: e.status, Metadata: copyMeta(e.rec.Meta),
		RegisteredAt: time.Unix(0, e.rec.Incarnation), LastHeartbeat: e.lastHeartbeat,
		NonIdempotent: e.rec.NonIdempotent, Priority: int(e.rec.Priority), Promotion: PromotionMode(e.rec.Promotion),
		Epoch: e.rec.Epoch, Endpoints: copyMeta(e.rec.Endpoints), Ejected: !e.ejectedUntil.IsZero(), load: e.load,
	}
	if e.rec.Role != uint8(RoleNone) {
		inst.Group = groupOf(&e.rec).group
	}
	return inst
}

// idempotent reports whether method may be re-run on another instance.
func (i *Instance) idempotent(method string) bool {
	return !slices.Contains(i.NonIdempotent, method)
}

func copyMeta(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

type tombstone struct {
	rec wire.Record // Deleted, with the version it supersedes
	at  time.Time   // local clock
}

// tombstoneRule says which version a tombstone takes.
type tombstoneRule int

const (
	// supersede: one Seq past the record's version, so that every node
	// holding the record accepts the deletion (deregistration, refutation
	// of a stale own record, a node that left).
	supersede tombstoneRule = iota
	// sameVersion: the record's own version. Used when this node reaps an
	// instance on its own: the tombstone only keeps stale gossip from
	// reviving it here, and any newer version from a still-living owner
	// still does.
	sameVersion
)

// tombstoneOf returns the tombstone that deletes rec's instance, stamped
// with now (informational, like Record.Time).
func tombstoneOf(rec *wire.Record, rule tombstoneRule, now time.Time) wire.Record {
	inc, seq := rec.Incarnation, rec.Seq
	if rule == supersede {
		inc, seq = successor(inc, seq)
	}
	return wire.Record{Service: rec.Service, ID: rec.ID, Node: rec.Node, Incarnation: inc,
		Seq: seq, Time: now.UnixNano(), Deleted: true}
}

// successor returns the least version newer than (inc, seq) that every
// node accepts: the next Seq, or, at wire.MaxSeq, the next incarnation.
// Incarnations are bounded by the receivers' clocks (see
// maxIncarnationLead), not by a fixed ceiling, so the next incarnation is
// always accepted a moment later.
func successor(inc int64, seq uint64) (int64, uint64) {
	if seq < wire.MaxSeq {
		return inc, seq + 1
	}
	return inc + 1, 0
}

// maxIncarnationLead is how far ahead of a receiver's clock an incarnation
// may be. Incarnations are the registering node's clock, so this allows
// that much clock skew between nodes; an incarnation further ahead is
// forged or broken and is refused, which keeps forged versions from
// climbing to a ceiling an owner could not refute.
const maxIncarnationLead = 24 * time.Hour

// registry is the replicated view of all instances, merged from gossip.
// Its methods are safe for concurrent use; emit is called with mu held, in
// order, and must not block.
type registry struct {
	self       string
	clk        clock.Clock
	timeout    time.Duration // Config.HeartbeatTimeout
	reap       time.Duration // Config.ReapTimeout
	ejectAfter int           // Config.EjectAfterFailures
	emit       func(Event)

	beating    func(instKey) bool // whether a local instance sends heartbeats now (not paused); set before use
	maxPerNode int                // Config.MaxInstancesPerNode
	maxTotal   int                // Config.MaxInstances

	mu      sync.RWMutex          // guards everything below
	byIndex map[nodeIndex]instKey // instances by their node's compact-heartbeat index (beats.go)
	entries map[instKey]*entry
	perNode map[string]int // live entries per node
	refused uint64         // records refused by maxPerNode or maxTotal
	tombs   map[instKey]tombstone
	dead    map[string]deadNode // nodes memberlist declared dead
	leaving map[string]bool     // nodes that said they are leaving (a leave notice, or a tombstone saying their instances left with them)
	pending map[instKey]bool    // local registrations in progress
	epochs  map[groupKey]uint64 // the highest epoch seen per role group, kept after its holder is gone

	claims        map[string]*claimEntry          // resource claims and releases, by resource
	owned         map[instKey]map[string]struct{} // live claims by owner
	maxClaims     int                             // Config.MaxResources
	maxClaimsPer  int                             // Config.MaxResourcesPerInstance
	claimsRefused uint64                          // claims refused by those caps
	claimsSwept   time.Time                       // when check last swept old claims
	snaps         *snapshots
}

func newRegistry(self string, clk clock.Clock, c *Config, emit func(Event)) *registry {
	r := &registry{
		self: self, clk: clk, timeout: c.HeartbeatTimeout, reap: c.ReapTimeout, ejectAfter: c.EjectAfterFailures,
		maxPerNode: c.MaxInstancesPerNode, maxTotal: c.MaxInstances, emit: emit,
		entries: make(map[instKey]*entry),
		perNode: make(map[string]int),
		tombs:   make(map[instKey]tombstone),
		dead:    make(map[string]deadNode),
		leaving: make(map[string]bool),
		pending: make(map[instKey]bool),
		byIndex: make(map[nodeIndex]instKey),
		epochs:  make(map[groupKey]uint64),
		claims:  make(map[string]*claimEntry),
		owned:   make(map[instKey]map[string]struct{}),

		maxClaims: c.MaxResources, maxClaimsPer: c.MaxResourcesPerInstance,
	}
	r.snaps = newSnapshots(r)
	return r
}

// reserveLocal reserves key for a new local record, checking for a live
// instance with the same key anywhere in the cluster, and raises
// rec.Incarnation above any version seen for the key.
func (r *registry) reserveLocal(rec *wire.Record) error {
	k := instKey{rec.Service, rec.ID}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.entries[k]; ok {
		return fmt.Errorf("%w: %s is already registered by node %s", ErrDuplicateInstance, k, e.rec.Node)
	}
	if r.pending[k] {
		return fmt.Errorf("%w: %s is being registered", ErrDuplicateInstance, k)
	}
	if n := r.perNode[r.self] + len(r.pending); n >= r.maxPerNode {
		return fmt.Errorf("%w: node %s already hosts %d instances (Config.MaxInstancesPerNode)", ErrTooManyInstances, r.self, n)
	}
	if n := len(r.entries) + len(r.pending); n >= r.maxTotal {
		return fmt.Errorf("%w: this node already knows %d instances (Config.MaxInstances)", ErrTooManyInstances, n)
	}
	if t, ok := r.tombs[k]; ok && rec.Incarnation <= t.rec.Incarnation {
		rec.Incarnation = t.rec.Incarnation + 1
	}
	r.pending[k] = true
	return nil
}

// releaseLocal drops a reservation that did not become a registration.
func (r *registry) releaseLocal(k instKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pending, k)
}

// commitLocal stores a local record reserved by reserveLocal.
func (r *registry) commitLocal(rec *wire.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pending, instKey{rec.Service, rec.ID})
	r.applyLocked(rec, "registered")
}

// tombstoneLocal deletes a local instance and returns the tombstone to
// gossip.
func (r *registry) tombstoneLocal(k instKey, reason string) (wire.Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok {
		return wire.Record{}, false
	}
	tomb := tombstoneOf(&e.rec, supersede, r.clk.Now())
	if reason == "left" {
		tomb.Status = wire.TombstoneLeft // peers report it as "left" too
	}
	r.applyLocked(&tomb, reason)
	return tomb, true
}

// apply merges a record received from gossip. It reports whether the record
// was new to this node (and so worth re-broadcasting).
func (r *registry) apply(rec *wire.Record, reason string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applyLocked(rec, reason)
}

func (r *registry) applyLocked(rec *wire.Record, reason string) bool {
	k := instKey{rec.Service, rec.ID}
	now := r.clk.Now()
	if t, ok := r.tombs[k]; ok && !wire.Newer(rec.Incarnation, rec.Seq, t.rec.Incarnation, t.rec.Seq) {
		return false
	}
	e, ok := r.entries[k]
	if ok && !wire.Newer(rec.Incarnation, rec.Seq, e.rec.Incarnation, e.rec.Seq) {
		return false
	}
	switch {
	case rec.Deleted:
		if !ok && len(r.tombs) >= r.maxTotal {
			// The tombstone of an instance never seen here guards
			// nothing; refuse it rather than grow without bound.
			r.refused++
			return false
		}
		r.tombs[k] = tombstone{rec: *rec, at: now}
		if rec.Status == wire.TombstoneLeft && rec.Node != r.self && len(r.leaving) < r.maxTotal {
			r.leaving[rec.Node] = true
		}
		if ok {
			r.removeLocked(k, e, reason, now)
		}
	case ok && e.rec.Incarnation == rec.Incarnation:
		delete(r.tombs, k)
		r.updateLocked(e, rec, now)
	default:
		if !ok && (r.perNode[rec.Node] >= r.maxPerNode || len(r.entries) >= r.maxTotal) {
			r.refused++
			return false
		}
		delete(r.tombs, k)
		if ok {
			// A re-registration replaces the old incarnation.
			r.removeLocked(k, e, "replaced", now)
		}
		r.insertLocked(k, rec, reason, now)
	}
	return true
}

// updateLocked applies a newer version of e's incarnation: fresh state,
// counting as a heartbeat. Routing is rebuilt when anything it reads (the
// address, role, metadata) changed.
func (r *registry) updateLocked(e *entry, rec *wire.Record, now time.Time) {
	routed := e.rec.Addr != rec.Addr || e.rec.Role != rec.Role || !maps.Equal(e.rec.Meta, rec.Meta) ||
		!slices.Equal(e.rec.NonIdempotent, rec.NonIdempotent) || !maps.Equal(e.rec.Endpoints, rec.Endpoints)
	if e.rec.Addr != rec.Addr {
		// Failures and ejections were the old address's.
		e.load, e.ejectedUntil, e.ejections = &instLoad{}, time.Time{}, 0
	}
	r.setRoleLocked(e, rec.Role, rec.Epoch, "", now)
	k := instKey{rec.Service, rec.ID}
	r.unindexLocked(k, &e.rec)
	r.indexLocked(k, rec)
	e.rec = *rec
	e.rec.Meta = copyMeta(rec.Meta)
	e.rec.Endpoints = copyMeta(rec.Endpoints)
	r.heartbeatLocked(e, now)
	if routed {
		r.snaps.markStale(rec.Service)
	}
}

// insertLocked stores a new instance.
func (r *registry) insertLocked(k instKey, rec *wire.Record, reason string, now time.Time) {
	e := &entry{rec: *rec, lastHeartbeat: now, load: &instLoad{}}
	e.rec.Meta = copyMeta(rec.Meta)
	e.rec.Endpoints = copyMeta(rec.Endpoints)
	r.noteEpochLocked(rec)
	if d, dead := r.dead[rec.Node]; dead && d.owns(rec) {
		e.nodeFailed, e.badSince = true, now
		reason = "node-failed" // it starts unhealthy, and this is why
	}
	e.status = e.effective()
	r.entries[k] = e
	r.indexLocked(k, rec)
	r.perNode[rec.Node]++
	r.snaps.markStale(k.service)
	r.emit(Event{Type: EventRegistered, Instance: e.instance(), OldStatus: e.status, NewStatus: e.status, Reason: reason, Time: now})
}

// removeLocked forgets an instance (its tombstone, if any, is the caller's
// business).
func (r *registry) removeLocked(k instKey, e *entry, reason string, now time.Time) {
	delete(r.entries, k)
	r.unindexLocked(k, &e.rec)
	r.releaseAllLocked(k, now)
	if r.perNode[e.rec.Node]--; r.perNode[e.rec.Node] <= 0 {
		delete(r.perNode, e.rec.Node)
	}
	r.snaps.markStale(k.service)
	r.emit(Event{Type: EventDeregistered, Instance: e.instance(), OldStatus: e.status, NewStatus: e.status, Reason: reason, Time: now})
}

// heartbeatLocked records a fresh heartbeat for e.
func (r *registry) heartbeatLocked(e *entry, now time.Time) {
	e.lastHeartbeat = now
	wasBad := e.timedOut || e.nodeFailed
	e.timedOut = false
	reason := "self-reported"
	if wasBad && !e.nodeFailed {
		reason = "recovered"
	}
	r.setStatusLocked(e, reason, now)
}

// setStatusLocked recomputes e's effective status and emits a change.
func (r *registry) setStatusLocked(e *entry, reason string, now time.Time) {
	ns := e.effective()
	if ns == e.status {
		return
	}
	old := e.status
	e.status = ns
	if (e.timedOut || e.nodeFailed) && e.badSince.IsZero() {
		e.badSince = now
	} else if !e.timedOut && !e.nodeFailed {
		e.badSince = time.Time{}
	}
	r.snaps.markStale(e.rec.Service)
	r.emit(Event{Type: EventStatusChanged, Instance: e.instance(), OldStatus: old, NewStatus: ns, Reason: reason, Time: now})
}

// reassert answers a foreign version (inc, seq) of a record this node owns
// (rec, when a whole record came; nil for a heartbeat). If it is newer
// than this node's own version, or the same version with other contents, the
// own record moves to the successor of the newer of the two, which every
// peer accepts over the foreign one, and is returned to be announced.
// Older versions (this node's own, still echoing through gossip) are
// ignored.
func (r *registry) reassert(k instKey, inc int64, seq uint64, rec *wire.Record) (wire.Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok || e.rec.Node != r.self {
		return wire.Record{}, false
	}
	own := &e.rec
	newer := wire.Newer(inc, seq, own.Incarnation, own.Seq)
	same := inc == own.Incarnation && seq == own.Seq
	if !newer && !(same && rec != nil && !sameContents(rec, own)) {
		return wire.Record{}, false
	}
	if newer {
		own.Incarnation, own.Seq = inc, seq
	}
	own.Incarnation, own.Seq = successor(own.Incarnation, own.Seq)
	own.Time = r.clk.Now().UnixNano()
	return *own, true
}

// sameContents reports whether two records of one instance say the same
// (versions and times aside).
func sameContents(a, b *wire.Record) bool {
	return a.Node == b.Node && a.Addr == b.Addr && a.Role == b.Role && a.Status == b.Status &&
		a.Deleted == b.Deleted && a.Heartbeats == b.Heartbeats && maps.Equal(a.Meta, b.Meta) &&
		slices.Equal(a.NonIdempotent, b.NonIdempotent) && a.Group == b.Group && a.Priority == b.Priority &&
		a.Promotion == b.Promotion && a.Epoch == b.Epoch && maps.Equal(a.Endpoints, b.Endpoints)
}

// announcedLeave notes that node said it is leaving (its leave notice)
// and reports whether that is new.
func (r *registry) announcedLeave(node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.leaving[node] || len(r.leaving) >= r.maxTotal {
		return false
	}
	r.leaving[node] = true
	return true
}

// left reports whether node announced that it is leaving (its leave
// notice or its instances' tombstones said so) and forgets it: memberlist's leave notification
// does not say whether a node left or died.
func (r *registry) left(node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	was := r.leaving[node]
	delete(r.leaving, node)
	return was
}

// nodeAt returns the node of a live instance record at call address addr,
// or "".
func (r *registry) nodeAt(addr string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, e := range r.entries {
		if e.rec.Addr == addr {
			return e.rec.Node
		}
	}
	return ""
}

// refusedRecords returns how many records and tombstones the caps refused.
func (r *registry) refusedRecords() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.refused
}

func (r *registry) get(k instKey) (Instance, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.entries[k]
	if !ok {
		return Instance{}, false
	}
	return e.instance(), true
}

func (r *registry) services() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	seen := make(map[string]struct{})
	for k := range r.entries {
		seen[k.service] = struct{}{}
	}
	return slices.Sorted(maps.Keys(seen))
}

// instances returns every known instance of service, sorted by ID.
func (r *registry) instances(service string) []Instance {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var all []Instance
	for k, e := range r.entries {
		if k.service == service {
			all = append(all, e.instance())
		}
	}
	sortByID(all)
	return all
}

func sortByID(insts []Instance) {
	slices.SortFunc(insts, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
}

// state returns every live record and tombstone, for push/pull.
func (r *registry) state() []wire.Record {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]wire.Record, 0, len(r.entries)+len(r.tombs))
	for _, e := range r.entries {
		out = append(out, e.rec)
	}
	for _, t := range r.tombs {
		out = append(out, t.rec)
	}
	return out
}
