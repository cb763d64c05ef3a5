// Package aegisgrpc lets grpc-go clients reach services registered with
// Aegis: a resolver for targets "aegis:///SERVICE" fed with the "grpc"
// endpoints (aegis.Service.Endpoints) of the service's healthy, non-ejected
// instances, and a balancer whose picker skips unhealthy and ejected
// instances, spreads load like Aegis's balancers, prefers another instance
// for a retried RPC and reports every RPC's outcome to Aegis's passive
// ejection (aegis.Node.ReportResult).
//
// Dial sets all of it up; NewBuilder and the balancer name "aegis" are for
// callers who assemble their own grpc.NewClient options.
package aegisgrpc

import (
	"maps"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/resolver"

	"github.com/aegisipc/aegis"
)

// Scheme is the resolver scheme: targets are "aegis:///SERVICE".
const Scheme = "aegis"

// EndpointName is the key of the endpoint the resolver reads from
// aegis.Instance.Endpoints.
const EndpointName = "grpc"

// Builder is a grpc resolver.Builder for one Aegis node. Pass it to
// grpc.WithResolvers; Dial does.
type Builder struct {
	node *aegis.Node
	opts options

	last atomic.Pointer[clientState] // the newest resolver's state (for tests)
}

// NewBuilder returns a resolver builder reading node's view of the cluster.
// Of opts, WithHashKey applies (it decides how the "aegis" balancer of a
// ClientConn using this resolver spreads load).
func NewBuilder(node *aegis.Node, opts ...Option) *Builder {
	b := &Builder{node: node, opts: defaultOptions()}
	for _, o := range opts {
		o(&b.opts)
	}
	return b
}

// Scheme returns "aegis".
func (b *Builder) Scheme() string { return Scheme }

// Build starts resolving target.Endpoint() (the service name). The resolver
// pushes a new address list whenever an event about the service changes
// the set of routable instances; it does not poll.
func (b *Builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	st := &clientState{node: b.node, service: target.Endpoint(), balancer: b.opts.balancer(), hashKey: b.opts.hashKey}
	st.live.Store(&liveSet{})
	b.last.Store(st)
	r := &aegisResolver{st: st, cc: cc, kick: make(chan struct{}, 1), done: make(chan struct{})}
	r.cancel = b.node.Subscribe(func(ev aegis.Event) {
		if ev.Instance.Service == st.service {
			r.ResolveNow(resolver.ResolveNowOptions{})
		}
	})
	r.update()
	r.wg.Add(1)
	go r.loop()
	return r, nil
}

// clientState is what one ClientConn's resolver and balancer share. Every
// address the resolver sends carries a pointer to it.
type clientState struct {
	node     *aegis.Node
	service  string
	balancer aegis.Balancer
	hashKey  string // outgoing metadata key for ConsistentHash; "" for RoundRobin
	// live is the newest set of routable instances, stored before the
	// resolver hands it to grpc, so that pickers built from an older set
	// skip instances that have left it.
	live atomic.Pointer[liveSet]
	// failed maps instance IDs to an *atomic.Bool: whether this ClientConn
	// reported a failure of the instance since its last reported success.
	failed sync.Map
}

// failedFlag returns the failure flag of instance id.
func (st *clientState) failedFlag(id string) *atomic.Bool {
	if f, ok := st.failed.Load(id); ok {
		return f.(*atomic.Bool)
	}
	f, _ := st.failed.LoadOrStore(id, new(atomic.Bool))
	return f.(*atomic.Bool)
}

// liveSet maps the ID of each routable instance to its grpc endpoint.
type liveSet struct{ addrs map[string]string }

// routable reports whether instance id at addr is in the set.
func (l *liveSet) routable(id, addr string) bool {
	a, ok := l.addrs[id]
	return ok && a == addr
}

type stateKey struct{}
type idKey struct{}

// aegisResolver feeds one ClientConn. Events and ResolveNow only signal
// kick; one goroutine reads the node's routing set and pushes it.
type aegisResolver struct {
	st     *clientState
	cc     resolver.ClientConn
	cancel func()
	kick   chan struct{} // capacity 1
	done   chan struct{}
	wg     sync.WaitGroup
}

// ResolveNow asks for a fresh read of the routing set; it never blocks.
func (r *aegisResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Close stops the subscription and the update goroutine.
func (r *aegisResolver) Close() {
	r.cancel()
	close(r.done)
	r.wg.Wait()
}

func (r *aegisResolver) loop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		case <-r.kick:
			r.update()
		}
	}
}

// update reads the routing set and, when it differs from the last one
// sent, stores it as the live set and sends it to grpc.
func (r *aegisResolver) update() {
	set := routableSet(r.st.node, r.st.service, EndpointName)
	if prev := r.st.live.Load(); prev.addrs != nil && maps.Equal(prev.addrs, set) {
		return
	}
	r.st.live.Store(&liveSet{addrs: set})
	addrs := make([]resolver.Address, 0, len(set))
	for id, addr := range set {
		addrs = append(addrs, resolver.Address{
			Addr:       addr,
			Attributes: attributes.New(stateKey{}, r.st).WithValue(idKey{}, id),
		})
	}
	_ = r.cc.UpdateState(resolver.State{Addresses: addrs})
}

// routableSet maps the ID of each instance of service that routing may
// pick to its endpoint named proto: the instances of HealthyInstances
// that advertise one. When none does (those that do are all ejected, while
// instances without the endpoint are not), it falls back like Aegis's own
// routing does when every instance is ejected: to the healthy plain
// (RoleNone) instances advertising it, else to the degraded ones.
func routableSet(node *aegis.Node, service, proto string) map[string]string {
	set := map[string]string{}
	for _, in := range node.HealthyInstances(service) {
		if addr := in.Endpoints[proto]; addr != "" {
			set[in.ID] = addr
		}
	}
	if len(set) > 0 {
		return set
	}
	all := node.Instances(service)
	for _, st := range []aegis.Status{aegis.StatusHealthy, aegis.StatusDegraded} {
		for _, in := range all {
			if addr := in.Endpoints[proto]; addr != "" && in.Status == st && in.Role == aegis.RoleNone {
				set[in.ID] = addr
			}
		}
		if len(set) > 0 {
			break
		}
	}
	return set
}
