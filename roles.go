// This file holds active/standby role groups as every node sees them: the
// public types (PromotionMode, RoleView, RoleChange, EpochFence), the
// promotion order, and the registry's per-group view that routing and
// promotion read. How an instance's own node promotes, renews and fences it
// is in promote.go.

package aegis

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aegisipc/aegis/internal/wire"
)

// PromotionMode says when a standby of a role group may be promoted.
type PromotionMode int

const (
	// PromoteWithMajority (the default) promotes a standby only while it
	// confirms, by round trips the others answered, that a strict majority
	// of the group's members (itself included) is reachable; an active that
	// cannot confirm a majority for Config.RoleLeaseTimeout stops serving
	// and demotes itself (self-fencing). The promotion waits until any
	// lease the old active could still hold has expired, plus a margin, so
	// no call is answered by two actives at once. The price: a group needs
	// three or more members to survive the loss of one (two members give no
	// availability when either fails), and promotion takes at least
	// 1.5 × RoleLeaseTimeout after the old active was last confirmed.
	PromoteWithMajority PromotionMode = iota
	// PromoteAlways promotes the first standby as soon as the active is
	// unhealthy in its node's view. Each side of a network partition may
	// then promote its own active: until the partition heals, both serve
	// (split brain), with different epochs. After it heals, the active
	// with the higher epoch stays (then the promotion order decides) and
	// the other is demoted on every node. Choose it when answering on both
	// sides matters more than a single writer, or use Request.Epoch to
	// fence stale actives downstream.
	PromoteAlways
)

// String returns "majority" or "always".
func (m PromotionMode) String() string {
	switch m {
	case PromoteWithMajority:
		return "majority"
	case PromoteAlways:
		return "always"
	}
	return fmt.Sprintf("promotion(%d)", int(m))
}

// RoleView is one role group as this node sees it (Node.Roles).
type RoleView struct {
	Service, Group string
	// Active is the instance calls to the group go to, nil while there is
	// none (the active failed and no standby has been promoted yet).
	Active *Instance
	// Standbys are the other members in promotion order: healthy ones
	// first, each part by higher Priority, then earlier registration, then
	// instance ID. While no active exists, Standbys[0] (if healthy) is the
	// one every node expects to be promoted.
	Standbys []Instance
	// Epoch is the highest epoch this node has seen in the group. Every
	// promotion takes a higher one (usually one more; a candidacy that
	// lost to another, or that a majority refused, uses up numbers).
	Epoch uint64
	Mode  PromotionMode
}

// RoleChange tells a registered instance that its role changed (see
// Registration.OnRoleChange).
type RoleChange struct {
	Role  Role
	Epoch uint64 // the group's epoch at which the instance became active; unchanged on demotion
	// Reason: "promoted" (a standby took over), "conflict" (another active
	// with a higher epoch, or the same epoch and earlier in promotion
	// order, was found),
	// "superseded" (a member answered with a newer epoch), "fenced" (a
	// majority could not be confirmed for RoleLeaseTimeout).
	Reason string
}

// groupKey names a role group: a service and the group within it (the
// service's name when Service.Group is empty).
type groupKey struct{ service, group string }

func (g groupKey) String() string {
	if g.group == g.service {
		return g.service
	}
	return g.service + "/" + g.group
}

func groupOf(rec *wire.Record) groupKey {
	if rec.Group == "" {
		return groupKey{rec.Service, rec.Service}
	}
	return groupKey{rec.Service, rec.Group}
}

// promotesBefore is the promotion order: higher Priority, then earlier
// registration (the incarnation is the registering node's clock), then
// instance ID. Every node orders a group's members the same way.
func promotesBefore(a, b *wire.Record) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if a.Incarnation != b.Incarnation {
		return a.Incarnation < b.Incarnation
	}
	return a.ID < b.ID
}

// activeBeats says which of two instances claiming to be active in one
// group stays: the higher epoch, then the promotion order.
func activeBeats(a, b *wire.Record) bool {
	if a.Epoch != b.Epoch {
		return a.Epoch > b.Epoch
	}
	return promotesBefore(a, b)
}

// servesAsActive reports whether e, as this node sees it, is an active
// routing may use: it claims the active role and is healthy or degraded.
func servesAsActive(e *entry) bool {
	return e.rec.Role == uint8(RoleActive) && (e.status == StatusHealthy || e.status == StatusDegraded)
}

// groupState is one role group computed from the registry: what routing,
// promotion and Roles read. It holds copies, safe to use unlocked.
type groupState struct {
	key      groupKey
	active   *Instance
	standbys []Instance // promotion order, healthy first
	members  []Instance // every member, any status
	epoch    uint64
	mode     PromotionMode
}

// candidate returns the standby every node expects to be promoted while
// the group has no active: the first healthy one in promotion order.
func (g *groupState) candidate() (Instance, bool) {
	if g.active != nil || len(g.standbys) == 0 || g.standbys[0].Status != StatusHealthy {
		return Instance{}, false
	}
	return g.standbys[0], true
}

// view returns g as a RoleView.
func (g *groupState) view() RoleView {
	return RoleView{Service: g.key.service, Group: g.key.group, Active: g.active,
		Standbys: g.standbys, Epoch: g.epoch, Mode: g.mode}
}

// buildGroup computes a group from its members' entries (any order).
// Called with the registry's lock held; seen is the highest epoch the
// registry remembers for the group.
func buildGroup(k groupKey, es []*entry, seen uint64) groupState {
	g := groupState{key: k, epoch: seen}
	var active *entry
	for _, e := range es {
		g.epoch = max(g.epoch, e.rec.Epoch)
		if servesAsActive(e) && (active == nil || activeBeats(&e.rec, &active.rec)) {
			active = e
		}
	}
	rest := make([]*entry, 0, len(es))
	for _, e := range es {
		if e != active {
			rest = append(rest, e)
		}
	}
	slices.SortFunc(rest, func(a, b *entry) int {
		ah, bh := a.status == StatusHealthy, b.status == StatusHealthy
		switch {
		case ah != bh && ah:
			return -1
		case ah != bh:
			return 1
		case promotesBefore(&a.rec, &b.rec):
			return -1
		}
		return 1
	})
	for _, e := range rest {
		g.standbys = append(g.standbys, e.instance())
	}
	modeFrom := active
	if active != nil {
		inst := active.instance()
		g.active = &inst
	} else if len(rest) > 0 {
		modeFrom = rest[0]
	}
	if modeFrom != nil {
		g.mode = PromotionMode(modeFrom.rec.Promotion)
	}
	g.members = make([]Instance, 0, len(es))
	if g.active != nil {
		g.members = append(g.members, *g.active)
	}
	g.members = append(g.members, g.standbys...)
	return g
}

// group returns role group k as this node sees it; ok is false when it has
// no members.
func (r *registry) group(k groupKey) (groupState, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var es []*entry
	for ik, e := range r.entries {
		if ik.service == k.service && e.rec.Role != uint8(RoleNone) && groupOf(&e.rec) == k {
			es = append(es, e)
		}
	}
	if len(es) == 0 {
		return groupState{}, false
	}
	return buildGroup(k, es, r.epochs[k]), true
}

// groups returns every role group of service, sorted by group name.
func (r *registry) groups(service string) []groupState {
	r.mu.RLock()
	defer r.mu.RUnlock()
	byGroup := make(map[groupKey][]*entry)
	for ik, e := range r.entries {
		if ik.service == service && e.rec.Role != uint8(RoleNone) {
			k := groupOf(&e.rec)
			byGroup[k] = append(byGroup[k], e)
		}
	}
	out := make([]groupState, 0, len(byGroup))
	for k, es := range byGroup {
		out = append(out, buildGroup(k, es, r.epochs[k]))
	}
	slices.SortFunc(out, func(a, b groupState) int { return strings.Compare(a.key.group, b.key.group) })
	return out
}

// noteEpochLocked remembers the highest epoch seen in rec's group, so that
// a promotion never reuses an epoch even after the instance that held it
// is gone. The map is bounded like the registry itself.
func (r *registry) noteEpochLocked(rec *wire.Record) {
	if rec.Epoch == 0 || rec.Role == uint8(RoleNone) {
		return
	}
	k := groupOf(rec)
	if cur, ok := r.epochs[k]; ok || len(r.epochs) < r.maxTotal {
		r.epochs[k] = max(cur, rec.Epoch)
	}
}

// setRoleLocked applies a role or epoch change of e (from its own node,
// through a heartbeat or a record) and emits EventRoleChanged.
func (r *registry) setRoleLocked(e *entry, role uint8, epoch uint64, reason string, now time.Time) {
	if e.rec.Role == role && e.rec.Epoch == epoch {
		return
	}
	changed := e.rec.Role != role
	e.rec.Role, e.rec.Epoch = role, epoch
	r.noteEpochLocked(&e.rec)
	r.snaps.markStale(e.rec.Service)
	if !changed {
		return
	}
	if reason == "" {
		reason = "demoted"
		if role == uint8(RoleActive) {
			reason = "promoted"
		}
	}
	r.emit(Event{Type: EventRoleChanged, Instance: e.instance(), OldStatus: e.status, NewStatus: e.status,
		Reason: reason, Time: now})
}

// setLocalRole changes a local instance's role and epoch and returns its
// record; with bump, one version newer, to announce.
func (r *registry) setLocalRole(k instKey, role Role, epoch uint64, reason string, bump bool) (wire.Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[k]
	if !ok || e.rec.Node != r.self {
		return wire.Record{}, false
	}
	now := r.clk.Now()
	if bump {
		e.rec.Incarnation, e.rec.Seq = successor(e.rec.Incarnation, e.rec.Seq)
		e.rec.Time = now.UnixNano()
	}
	r.setRoleLocked(e, uint8(role), epoch, reason, now)
	return e.rec, true
}

// Roles returns the role groups of service as this node sees them, sorted
// by group; nil when service has no instance with a role.
func (n *Node) Roles(service string) []RoleView {
	gs := n.reg.groups(service)
	if len(gs) == 0 {
		return nil
	}
	out := make([]RoleView, len(gs))
	for i := range gs {
		out[i] = gs[i].view()
	}
	return out
}

// ErrStaleEpoch is returned by EpochFence.Admit for a call from an active
// older than one already admitted.
var ErrStaleEpoch = errors.New("aegis: stale epoch")

// EpochFence refuses work from stale actives, as a fencing token does: it
// remembers the highest epoch it admitted and refuses anything older. Use
// one per resource a role group's active writes to (in the handler, or
// better, in the store itself, with the epoch stored beside the data).
// The zero value is ready; safe for concurrent use.
type EpochFence struct {
	mu   sync.Mutex
	high uint64 // guarded by mu
}

// Admit records epoch and returns nil if it is at least the highest seen,
// else an error wrapping ErrStaleEpoch (and RemoteError-shaped for callers:
// not retryable). Calls outside role groups carry epoch 0, which is
// admitted only while nothing newer has been.
func (f *EpochFence) Admit(epoch uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch < f.high {
		return fmt.Errorf("%w: epoch %d, but epoch %d has been admitted: this instance is no longer the active", ErrStaleEpoch, epoch, f.high)
	}
	f.high = epoch
	return nil
}

// AdmitRequest is Admit(req.Epoch).
func (f *EpochFence) AdmitRequest(req *Request) error { return f.Admit(req.Epoch) }

// Highest returns the highest epoch admitted.
func (f *EpochFence) Highest() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.high
}
