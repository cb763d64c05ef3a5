// This file holds the "aegis" balancer: grpc's base balancer (one SubConn
// per resolved address) with a picker that routes like Aegis.

package aegisgrpc

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/aegisipc/aegis"
)

// BalancerName is the name the balancer is registered under; a service
// config selects it with {"loadBalancingConfig": [{"aegis": {}}]}. It
// works only with addresses from this package's resolver.
const BalancerName = "aegis"

func init() {
	balancer.Register(base.NewBalancerBuilder(BalancerName, pickerBuilder{}, base.Config{}))
}

type pickerBuilder struct{}

// conn is one READY SubConn and the instance behind it.
type conn struct {
	sc   balancer.SubConn
	id   string
	addr string
	done func(balancer.DoneInfo)
}

// Build returns a picker over the READY SubConns.
func (pickerBuilder) Build(info base.PickerBuildInfo) balancer.Picker {
	p := &picker{conns: make(map[string]*conn, len(info.ReadySCs))}
	for sc, sci := range info.ReadySCs {
		st, _ := sci.Address.Attributes.Value(stateKey{}).(*clientState)
		id, _ := sci.Address.Attributes.Value(idKey{}).(string)
		if st == nil || id == "" {
			continue // not from this package's resolver
		}
		p.st = st
		c := &conn{sc: sc, id: id, addr: sci.Address.Addr}
		failed := st.failedFlag(id)
		c.done = func(di balancer.DoneInfo) { report(st, id, failed, di) }
		p.conns[id] = c
		p.insts = append(p.insts, aegis.Instance{Service: st.service, ID: id})
	}
	if p.st == nil {
		return base.NewErrPicker(balancer.ErrNoSubConnAvailable)
	}
	p.live = p.st.live.Load()
	if p.st.hashKey != "" {
		p.hashOverLive()
	}
	slices.SortFunc(p.insts, func(a, b aegis.Instance) int { return strings.Compare(a.ID, b.ID) })
	return p
}

// hashOverLive puts every routable instance on a consistent-hash picker's
// ring, READY or not, and excludes the ones not READY: keys then move only
// when the routing set changes, not while connections come up (a key whose
// instance is not READY goes to the next one on the ring meanwhile).
func (p *picker) hashOverLive() {
	p.insts = p.insts[:0]
	for id, addr := range p.live.addrs {
		p.insts = append(p.insts, aegis.Instance{Service: p.st.service, ID: id})
		if c, ok := p.conns[id]; !ok || c.addr != addr {
			if p.notReady == nil {
				p.notReady = make(map[string]struct{})
			}
			p.notReady[id] = struct{}{}
		}
	}
}

// picker routes one ClientConn's RPCs among its READY instances, sorted by
// ID, with the ClientConn's aegis.Balancer.
type picker struct {
	st       *clientState
	live     *liveSet // the live set when the picker was built
	insts    []aegis.Instance
	conns    map[string]*conn
	notReady map[string]struct{} // instances in insts without a READY SubConn (see hashOverLive)
}

// Pick picks a READY instance that is still routable, other than the ones
// this RPC already tried when there is one (see the interceptors in
// dial.go), and returns its SubConn with a Done that reports the outcome.
func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	req := aegis.RouteRequest{Service: p.st.service, Method: info.FullMethodName}
	if k := p.st.hashKey; k != "" {
		if v := metadata.ValueFromOutgoingContext(info.Ctx, k); len(v) > 0 {
			req.Key = v[0]
		}
	}
	req.Exclude = p.notReady
	if live := p.st.live.Load(); live != p.live {
		req.Exclude = p.stale(live)
	}
	tried, _ := info.Ctx.Value(triedKey{}).(*triedSet)
	inst, err := p.pickAvoiding(req, tried)
	c := p.conns[inst.ID]
	if err != nil || c == nil {
		// Nothing routable is READY: wait for the next picker.
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	tried.add(inst.ID)
	return balancer.PickResult{SubConn: c.sc, Done: c.done}, nil
}

// pickAvoiding picks with the instances in tried excluded too, unless that
// leaves none: a retry prefers another instance but may come back.
func (p *picker) pickAvoiding(req aegis.RouteRequest, tried *triedSet) (aegis.Instance, error) {
	ids := tried.list()
	if len(ids) > 0 {
		ex := make(map[string]struct{}, len(req.Exclude)+len(ids))
		for id := range req.Exclude {
			ex[id] = struct{}{}
		}
		for _, id := range ids {
			ex[id] = struct{}{}
		}
		if inst, err := p.st.balancer.Pick(aegis.RouteRequest{Service: req.Service, Method: req.Method,
			Key: req.Key, Exclude: ex}, p.insts); err == nil {
			return inst, nil
		}
	}
	return p.st.balancer.Pick(req, p.insts)
}

// stale returns the IDs of the picker's instances that left the live set
// since it was built (an event arrived; the next picker is on its way),
// with the ones not READY.
func (p *picker) stale(live *liveSet) map[string]struct{} {
	ex := maps.Clone(p.notReady)
	for _, c := range p.conns {
		if !live.routable(c.id, c.addr) {
			if ex == nil {
				ex = make(map[string]struct{})
			}
			ex[c.id] = struct{}{}
		}
	}
	return ex
}

// report tells Aegis's passive ejection how an RPC to instance id went.
// Connection-level failures and Unavailable count as failures, and so
// does a deadline that passed before any byte of an answer; any other
// status (an application error included) means the instance answered. A
// cancelled RPC says nothing. A success is reported only when this
// ClientConn reported a failure of the instance since its last reported
// success (failed): it only clears the failure count, and a report costs a
// registry lookup.
func report(st *clientState, id string, failed *atomic.Bool, di balancer.DoneInfo) {
	ok, known := outcome(di)
	switch {
	case !known:
		return
	case !ok:
		failed.Store(true)
	case !failed.Swap(false):
		return
	}
	st.node.ReportResult(st.service, id, ok)
}

// outcome classifies an RPC's end: ok is whether the instance answered;
// known is false when the RPC says nothing about the instance.
func outcome(di balancer.DoneInfo) (ok, known bool) {
	if di.Err == nil {
		return true, true
	}
	if errors.Is(di.Err, context.Canceled) {
		return false, false
	}
	s, isStatus := status.FromError(di.Err)
	if !isStatus {
		return false, true // a connection-level error
	}
	switch s.Code() {
	case codes.Unavailable:
		return false, true
	case codes.Canceled:
		return false, false
	case codes.DeadlineExceeded:
		if di.BytesReceived {
			return false, false
		}
		return false, true
	}
	return true, true
}

// triedKey is the context key of an RPC's triedSet.
type triedKey struct{}

// triedSet is an RPC's context carrying the instances its attempts were
// sent to, so that a retry (or hedge) prefers another; being the context
// itself, it costs one allocation per RPC. Attempts may run concurrently
// (hedging), hence the lock. A nil *triedSet is empty and ignores adds.
type triedSet struct {
	context.Context
	mu  sync.Mutex
	ids []string
	buf [4]string
}

// Value returns the set itself for triedKey.
func (t *triedSet) Value(key any) any {
	if _, ok := key.(triedKey); ok {
		return t
	}
	return t.Context.Value(key)
}

func (t *triedSet) add(id string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.ids = append(t.ids, id)
	t.mu.Unlock()
}

func (t *triedSet) list() []string {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ids
}
