// This file holds what a node does for its own role-group members:
// promotion of the standby every node expects, lease rounds that keep an
// active serving under PromoteWithMajority, self-fencing, demotion on a
// conflict, and the answers a member gives to its group's lease and
// candidacy round trips (internal service rolesService).

package aegis

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis/internal/rpc"
	"github.com/aegisipc/aegis/internal/wire"
)

// rolesService is the internal service role round trips are sent to (a
// ':' cannot occur in a registered service's name).
const rolesService = "aegis:roles"

// Round trips of the majority protocol, as methods of rolesService.
const (
	// roleLease: an active asks a member to confirm it (epoch) as the
	// group's active. A member refuses when it has promised a newer epoch
	// to a candidate or knows a newer active.
	roleLease = "lease"
	// roleCandidacy: the standby every node expects to be promoted asks a
	// member to promise it the next epoch. The grant carries how long ago
	// the member last confirmed an active's lease, so the candidate can
	// wait until that lease has surely expired.
	roleCandidacy = "candidacy"
)

// roleState is a local instance's part in its role group, decided by its
// own node only.
type roleState struct {
	cur        atomic.Int32  // current Role
	epoch      atomic.Uint64 // the group's epoch at which it last became active
	leaseUntil atomic.Int64  // PromoteWithMajority: serves as active while Node.mono is below this

	mu           sync.Mutex // guards the fields below
	activeSince  time.Time
	promised     uint64 // the newest epoch promised to a candidate
	promisedTo   string // the candidate's instance ID
	lastLeaseAck time.Time
	heardEpoch   uint64    // the newest epoch a refusal named
	pending      *campaign // a won candidacy waiting for the old lease to expire
	busy         bool      // a lease or candidacy round is in flight
	nextTry      time.Time // no candidacy before this (after a lost one)
	onChange     []func(RoleChange)
}

// campaign is a candidacy a majority granted: the instance becomes active
// with epoch at readyAt.
type campaign struct {
	epoch   uint64
	readyAt time.Time
}

// Role returns the instance's current role and the epoch at which it last
// became active.
func (r *Registration) Role() (Role, uint64) {
	return Role(r.role.cur.Load()), r.role.epoch.Load()
}

// OnRoleChange registers f to be called, from a goroutine of the node,
// whenever this instance's role changes (promoted, demoted, fenced). f must
// not block for long; calls are in order.
func (r *Registration) OnRoleChange(f func(RoleChange)) {
	r.role.mu.Lock()
	defer r.role.mu.Unlock()
	r.role.onChange = append(r.role.onChange, f)
}

// serving reports whether r may answer a call as its group's active now
// (now from Node.mono), and if not, why.
func (r *Registration) serving(now int64) (bool, string) {
	if Role(r.role.cur.Load()) != RoleActive {
		return false, "is a standby"
	}
	if r.svc.Promotion == PromoteWithMajority && now >= r.role.leaseUntil.Load() {
		return false, "has no confirmed majority lease (fenced, or just promoted)"
	}
	return true, ""
}

// roleLoop runs the role steps of the local members: every
// RoleLeaseTimeout/4 while there are any, and at once when the registry
// reports a change in a role group or a member registers (kickRoles). A
// node without role members does not wake for them: in a cluster of
// hundreds of nodes in one process (aegis-bench scale), 2 wakeups a second
// per node for nothing were a measurable share of its idle CPU.
func (n *Node) roleLoop() {
	period := n.cfg.RoleLeaseTimeout / 4
	t := n.clk.NewTimer(period)
	n.spawn(func() {
		defer t.Stop()
		armed := true // t is running
		for {
			select {
			case <-n.stopCh:
				return
			case <-t.C():
				armed = false
			case <-n.roleKick:
			}
			n.roleRuns.Add(1)
			members := n.roleMembers()
			for _, r := range members {
				n.roleStep(r)
			}
			if len(members) > 0 && !armed {
				t.Reset(period)
				armed = true
			}
		}
	})
}

// mono turns a time of the node's clock into nanoseconds since the node
// started, read from the monotonic clock where t has one: leases compare
// these, so a step of the wall clock (NTP, an operator) cannot lengthen
// one.
func (n *Node) mono(t time.Time) int64 { return int64(t.Sub(n.started)) }

// kickRoles makes the role loop run soon. It never blocks.
func (n *Node) kickRoles() {
	select {
	case n.roleKick <- struct{}{}:
	default:
	}
}

// roleMembers returns the local instances registered with a role.
func (n *Node) roleMembers() []*Registration {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*Registration
	for _, r := range n.local {
		if r.svc.Role != RoleNone && !r.done.Load() {
			out = append(out, r)
		}
	}
	return out
}

// roleStep decides what r's node does for it now.
func (n *Node) roleStep(r *Registration) {
	g, ok := n.reg.group(r.group)
	if !ok || n.state.Load() != stateRunning {
		return
	}
	if Role(r.role.cur.Load()) == RoleActive {
		n.activeStep(r, &g)
	} else {
		n.standbyStep(r, &g)
	}
}

// activeStep demotes r when another active wins in this node's view or its
// lease has lapsed, and otherwise renews the lease.
func (n *Node) activeStep(r *Registration, g *groupState) {
	if g.active != nil && g.active.ID != r.key.id {
		n.setRole(r, RoleStandby, r.role.epoch.Load(), "conflict")
		return
	}
	if r.svc.Promotion != PromoteWithMajority {
		return
	}
	now := n.clk.Now()
	st := &r.role
	st.mu.Lock()
	lapsed := n.mono(now) >= st.leaseUntil.Load() && now.Sub(st.activeSince) >= n.cfg.RoleLeaseTimeout
	start := !lapsed && !st.busy
	st.busy = st.busy || start
	st.mu.Unlock()
	switch {
	case lapsed:
		n.setRole(r, RoleStandby, r.role.epoch.Load(), "fenced")
	case start:
		if !n.spawn(func() { n.leaseRound(r, *g) }) {
			n.roundDone(r)
		}
	}
}

// standbyStep promotes r when it is the standby every node expects to be
// promoted: at once under PromoteAlways, after a won candidacy and the
// lease margin under PromoteWithMajority.
func (n *Node) standbyStep(r *Registration, g *groupState) {
	st := &r.role
	// An instance whose heartbeats are paused or that reports itself not
	// healthy looks healthy only to its own node: it does not stand.
	standing := !r.paused.Load() && Status(r.status.Load()) == StatusHealthy && g.active == nil
	if n.finishCampaign(r, standing) {
		return
	}
	c, ok := g.candidate()
	if !standing || !ok || c.ID != r.key.id {
		return
	}
	// A standby registered a moment ago may not know its group yet (an
	// active registered elsewhere is still on its way): it waits one
	// RoleLeaseTimeout before it stands. Under PromoteWithMajority, a
	// standby that has never seen its group have an active stands only
	// with a declared GroupSize: alone on a cut-off node it would count
	// itself a majority of the one member it knows.
	if n.clk.Now().Sub(r.regTime) < n.cfg.RoleLeaseTimeout ||
		r.svc.Promotion == PromoteWithMajority && g.epoch == 0 && r.svc.GroupSize == 0 {
		return
	}
	if r.svc.Promotion == PromoteAlways {
		n.setRole(r, RoleActive, g.epoch+1, "promoted")
		return
	}
	now := n.clk.Now()
	st.mu.Lock()
	start := !st.busy && !now.Before(st.nextTry)
	st.busy = st.busy || start
	st.mu.Unlock()
	if start && !n.spawn(func() { n.candidacyRound(r, *g) }) {
		n.roundDone(r)
	}
}

// finishCampaign handles a won candidacy of r: it promotes r once the
// margin has passed, as long as r still stands and holds its own promise
// (a newer candidate may have taken this member's promise meanwhile). A
// candidacy is not dropped because another standby briefly looked better
// (a record arriving counts as a heartbeat): the majority's promises make
// promoting it safe. It reports whether r had a campaign under way.
func (n *Node) finishCampaign(r *Registration, standing bool) bool {
	st := &r.role
	st.mu.Lock()
	p := st.pending
	if p == nil {
		st.mu.Unlock()
		return false
	}
	if !standing || st.promised != p.epoch || st.promisedTo != r.key.id {
		st.pending = nil
		st.mu.Unlock()
		return false
	}
	if n.clk.Now().Before(p.readyAt) {
		st.mu.Unlock()
		return true
	}
	st.pending = nil
	st.mu.Unlock()
	n.setRole(r, RoleActive, p.epoch, "promoted")
	n.kickRoles() // the first lease round, at once
	return true
}

func (n *Node) roundDone(r *Registration) {
	r.role.mu.Lock()
	r.role.busy = false
	r.role.mu.Unlock()
}

// setRole changes r's role, tells the cluster (a newer record and an
// immediate heartbeat) and calls r's OnRoleChange functions.
func (n *Node) setRole(r *Registration, role Role, epoch uint64, reason string) {
	st := &r.role
	st.mu.Lock()
	if Role(st.cur.Load()) == role && st.epoch.Load() == epoch {
		st.mu.Unlock()
		return
	}
	st.cur.Store(int32(role))
	st.epoch.Store(epoch)
	st.leaseUntil.Store(0)
	if role == RoleActive {
		st.activeSince = n.clk.Now()
	}
	fns := slices.Clone(st.onChange)
	st.mu.Unlock()

	// Heartbeats carry the role. An instance whose heartbeats are paused
	// tells nobody, not even this node's registry, until they resume: it
	// is unhealthy everywhere else anyway, and a record (or a local record
	// that differs from what peers hold at the same version, which this
	// node would then re-assert) would count as a heartbeat. Without
	// heartbeats, a newer record carries the role.
	if n.cfg.HeartbeatEnabled && r.paused.Load() {
		n.log.Info("role changed", "service", r.key.service, "instance", r.key.id, "group", r.group.group,
			"role", role.String(), "epoch", epoch, "reason", reason, "announced", "when heartbeats resume")
		n.notifyRole(fns, RoleChange{Role: role, Epoch: epoch, Reason: reason})
		return
	}
	rec, ok := n.reg.setLocalRole(r.key, role, epoch, reason, !n.cfg.HeartbeatEnabled)
	if n.cfg.HeartbeatEnabled {
		n.heartbeatRound(gossipAndDirect)
	} else if ok {
		if msg, err := wire.Encode(&rec); err == nil {
			n.gossip.announce(recordName(r.key), msg)
		}
	}
	n.notifyRole(fns, RoleChange{Role: role, Epoch: epoch, Reason: reason})
}

func (n *Node) notifyRole(fns []func(RoleChange), change RoleChange) {
	for _, f := range fns {
		f(change)
	}
}

// roleReply is a member's answer to a lease or candidacy round trip.
type roleReply struct {
	granted bool
	epoch   uint64        // refused: the newer epoch the member knows of
	ago     time.Duration // granted candidacy: since the member last confirmed a lease; <0: never
	at      time.Time     // the asker's clock when the reply arrived
}

// askGroup sends one round trip of kind to every other member of g and
// returns the replies that came within RoleLeaseTimeout/4.
//
// It returns as soon as the grants make a majority with r, cancelling the
// round trips still out: a member that does not answer (a dead one, the
// likely reason for a promotion) costs nothing once a majority has.
func (n *Node) askGroup(r *Registration, g *groupState, kind string, epoch uint64) []roleReply {
	timeout := n.cfg.RoleLeaseTimeout / 4
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	need := quorum(r, g) - 1 // grants needed besides r's own
	var mu sync.Mutex
	var out []roleReply
	granted := 0
	var wg sync.WaitGroup
	for _, m := range g.members {
		if m.ID == r.key.id {
			continue
		}
		payload := encodeRoleMsg(roleMsg{service: r.key.service, group: r.group.group, target: m.ID, from: r.key.id, epoch: epoch})
		wg.Go(func() {
			resp, err := n.caller.client.Call(ctx, m.Addr, &rpc.Request{Service: rolesService, Method: kind,
				InstanceID: m.ID, Payload: payload, Timeout: timeout})
			if err != nil || resp.Err != nil {
				return
			}
			rep, ok := decodeRoleReply(resp.Payload)
			if !ok {
				return
			}
			rep.at = n.clk.Now()
			mu.Lock()
			out = append(out, rep)
			if rep.granted {
				if granted++; granted >= need {
					cancel()
				}
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// quorum is how many members, r included, make a strict majority of r's
// group: over the members this node knows, or Service.GroupSize when that
// is larger.
func quorum(r *Registration, g *groupState) int {
	return max(len(g.members), r.svc.GroupSize)/2 + 1
}

// leaseRound asks the group to confirm r as active; with a strict majority
// (r included) r serves until the round's start plus RoleLeaseTimeout. A
// refusal naming a newer epoch demotes r at once.
func (n *Node) leaseRound(r *Registration, g groupState) {
	defer n.roundDone(r)
	epoch := r.role.epoch.Load()
	sent := n.clk.Now()
	granted := 1
	var newer uint64
	for _, rep := range n.askGroup(r, &g, roleLease, epoch) {
		if rep.granted {
			granted++
		} else {
			newer = max(newer, rep.epoch)
		}
	}
	if Role(r.role.cur.Load()) != RoleActive || r.role.epoch.Load() != epoch {
		return // changed meanwhile
	}
	if newer > epoch {
		n.setRole(r, RoleStandby, epoch, "superseded")
		return
	}
	if granted >= quorum(r, &g) {
		until := n.mono(sent.Add(n.cfg.RoleLeaseTimeout))
		for {
			cur := r.role.leaseUntil.Load()
			if cur >= until || r.role.leaseUntil.CompareAndSwap(cur, until) {
				break
			}
		}
	}
}

// candidacyRound asks the group to promise r the next epoch. With a strict
// majority (r included), r becomes active once every lease its granters
// confirmed has expired, plus half a lease of margin; otherwise it takes
// its own promise back and tries again a little later.
func (n *Node) candidacyRound(r *Registration, g groupState) {
	defer n.roundDone(r)
	st := &r.role
	st.mu.Lock()
	prev, prevTo := st.promised, st.promisedTo
	epoch := max(g.epoch, st.promised, st.heardEpoch) + 1
	st.promised, st.promisedTo = epoch, r.key.id
	latest := st.lastLeaseAck
	st.mu.Unlock()

	granted := 1
	var heard uint64
	for _, rep := range n.askGroup(r, &g, roleCandidacy, epoch) {
		switch {
		case !rep.granted:
			heard = max(heard, rep.epoch)
		default:
			granted++
			if rep.ago >= 0 {
				if at := rep.at.Add(-rep.ago); at.After(latest) {
					latest = at
				}
			}
		}
	}
	now := n.clk.Now()
	st.mu.Lock()
	defer st.mu.Unlock()
	st.heardEpoch = max(st.heardEpoch, heard)
	if granted >= quorum(r, &g) && st.promised == epoch && st.promisedTo == r.key.id {
		ready := now
		if !latest.IsZero() {
			ready = latest.Add(n.cfg.RoleLeaseTimeout + n.cfg.RoleLeaseTimeout/2)
		}
		st.pending = &campaign{epoch: epoch, readyAt: ready}
		n.wakeAt(ready)
		return
	}
	if st.promised == epoch && st.promisedTo == r.key.id {
		st.promised, st.promisedTo = prev, prevTo
	}
	quarter := int64(n.cfg.RoleLeaseTimeout / 4)
	st.nextTry = now.Add(time.Duration(quarter/2 + rand.Int64N(quarter)))
}

// wakeAt runs the role loop at t (on the node's clock) as well as on its
// ticks.
func (n *Node) wakeAt(t time.Time) {
	d := t.Sub(n.clk.Now())
	if d <= 0 {
		n.kickRoles()
		return
	}
	timer := n.clk.NewTimer(d)
	if !n.spawn(func() {
		defer timer.Stop()
		select {
		case <-n.stopCh:
		case <-timer.C():
			n.kickRoles()
		}
	}) {
		timer.Stop()
	}
}

// serveRoles answers a lease or candidacy round trip for a local member.
func (n *Node) serveRoles(req *rpc.Request) rpc.Response {
	m, ok := decodeRoleMsg(req.Payload)
	if !ok || m.target != req.InstanceID {
		return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeBadRequest, Message: "malformed role message"}}
	}
	r := n.server.lookup(m.service, m.target)
	if r == nil || r.done.Load() || r.svc.Role == RoleNone || r.group.group != m.group {
		return unavailable("instance %s/%s is not a member of role group %s here", m.service, m.target, m.group)
	}
	g, _ := n.reg.group(r.group)
	var rep roleReply
	switch req.Method {
	case roleLease:
		rep = n.answerLease(r, &g, m)
	case roleCandidacy:
		rep = n.answerCandidacy(r, &g, m)
	default:
		return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeBadRequest, Message: fmt.Sprintf("unknown role method %q", req.Method)}}
	}
	return rpc.Response{Payload: encodeRoleReply(rep)}
}

// answerLease confirms m.from as active unless this member promised a newer
// epoch, or this epoch to another instance, or knows a newer active. A
// confirmation is itself a promise of m.epoch to m.from: two actives that
// took the same epoch (registered at once on nodes that did not yet see
// each other) cannot both gather a majority.
func (n *Node) answerLease(r *Registration, g *groupState, m roleMsg) roleReply {
	st := &r.role
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case m.epoch < st.promised, m.epoch == st.promised && st.promisedTo != "" && st.promisedTo != m.from:
		// Promised to a newer candidate, or this epoch to another one.
		return roleReply{epoch: st.promised}
	case Role(st.cur.Load()) == RoleActive && r.key.id != m.from && st.epoch.Load() > m.epoch:
		return roleReply{epoch: st.epoch.Load()}
	case g.active != nil && g.active.ID != m.from && g.active.Epoch > m.epoch:
		return roleReply{epoch: g.active.Epoch}
	}
	st.promised, st.promisedTo = m.epoch, m.from
	st.lastLeaseAck = n.clk.Now()
	return roleReply{granted: true}
}

// answerCandidacy promises m.epoch to m.from unless a newer or other
// promise stands, this member is an active holding its lease, or it still
// sees a healthy active it confirmed within the last RoleLeaseTimeout
// (so a standby that merely lost sight of a working active cannot depose
// it).
func (n *Node) answerCandidacy(r *Registration, g *groupState, m roleMsg) roleReply {
	now := n.clk.Now()
	st := &r.role
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case m.epoch < st.promised || m.epoch == st.promised && st.promisedTo != m.from:
		return roleReply{epoch: st.promised}
	case m.epoch <= g.epoch:
		return roleReply{epoch: g.epoch}
	case Role(st.cur.Load()) == RoleActive && n.mono(now) < st.leaseUntil.Load():
		return roleReply{epoch: st.epoch.Load()}
	case g.active != nil && !st.lastLeaseAck.IsZero() && now.Sub(st.lastLeaseAck) < n.cfg.RoleLeaseTimeout:
		return roleReply{epoch: g.active.Epoch}
	}
	st.promised, st.promisedTo = m.epoch, m.from
	ago := time.Duration(-1)
	if !st.lastLeaseAck.IsZero() {
		ago = max(now.Sub(st.lastLeaseAck), 0)
	}
	return roleReply{granted: true, ago: ago}
}

// roleMsg is a lease or candidacy request: which member it asks (target,
// of service's group) for whom (from) and which epoch.
type roleMsg struct {
	service, group, target, from string
	epoch                        uint64
}

// encodeRoleMsg encodes m as the epoch (8 bytes) then four strings, each
// with a one-byte length (names are at most 128 bytes).
func encodeRoleMsg(m roleMsg) []byte {
	b := binary.BigEndian.AppendUint64(nil, m.epoch)
	for _, s := range []string{m.service, m.group, m.target, m.from} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	return b
}

// decodeRoleMsg decodes and validates a roleMsg from the network.
func decodeRoleMsg(b []byte) (roleMsg, bool) {
	if len(b) < 8 {
		return roleMsg{}, false
	}
	m := roleMsg{epoch: binary.BigEndian.Uint64(b)}
	b = b[8:]
	fields := []*string{&m.service, &m.group, &m.target, &m.from}
	for _, f := range fields {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return roleMsg{}, false
		}
		*f, b = string(b[1:1+int(b[0])]), b[1+int(b[0]):]
	}
	ok := len(b) == 0 && m.epoch <= wire.MaxEpoch && validName(m.service, maxNameLen) &&
		validName(m.group, maxNameLen) && validName(m.target, maxNameLen) && validName(m.from, maxNameLen)
	return m, ok
}

// encodeRoleReply encodes a reply as one byte (1 granted), the epoch and
// ago in nanoseconds (8 bytes each).
func encodeRoleReply(r roleReply) []byte {
	b := make([]byte, 0, 17)
	if r.granted {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint64(b, r.epoch)
	return binary.BigEndian.AppendUint64(b, uint64(r.ago))
}

func decodeRoleReply(b []byte) (roleReply, bool) {
	if len(b) != 17 || b[0] > 1 {
		return roleReply{}, false
	}
	return roleReply{granted: b[0] == 1, epoch: binary.BigEndian.Uint64(b[1:]),
		ago: time.Duration(int64(binary.BigEndian.Uint64(b[9:])))}, true
}
