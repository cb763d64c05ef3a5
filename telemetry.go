// This file holds the node's OpenTelemetry instruments (Config.MeterProvider)
// and what records into them. Call durations follow the OpenTelemetry RPC
// semantic conventions (rpc.client.call.duration, rpc.server.call.duration
// with rpc.system.name "aegis"); everything else is named aegis.*. Every
// attribute takes values from a bounded set: service names the node knows,
// method names capped per node, statuses, outcomes and reasons from fixed
// lists; never message IDs, instance IDs or payloads.
//
// With no SDK behind the provider (the otel global one before
// SetMeterProvider, or a no-op one), instruments report Enabled false and
// the call path skips measuring altogether.

package aegis

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/semconv/v1.43.0/rpcconv"

	"github.com/aegisipc/aegis/internal/rpc"
)

// rpcSystem is the rpc.system.name of Aegis calls.
const rpcSystem = rpcconv.SystemNameAttr("aegis")

// maxMethodLabels bounds the distinct rpc.method values one node reports;
// later ones are reported as "_OTHER" (the conventions' value for methods
// an instrumentation does not recognise).
const maxMethodLabels = 1000

// maxOptSets bounds the cached attribute options (see optSets).
const maxOptSets = 20000

// nodeMetrics are the OpenTelemetry instruments of a Node.
type nodeMetrics struct {
	gossipDropped  metric.Int64Counter
	gossipBytes    metric.Int64Counter
	heartbeatsSent metric.Int64Counter
	heartbeatsRecv metric.Int64Counter
	duplicates     metric.Int64Counter
	sameRetries    metric.Int64Counter
	dedupEvictions metric.Int64Counter
	hedges         metric.Int64Counter
	transitions    metric.Int64Counter
	ejections      metric.Int64Counter
	calls          metric.Int64Counter
	attempts       metric.Int64Counter
	exhausted      metric.Int64Counter
	budgetRefused  metric.Int64Counter
	instances      metric.Int64ObservableGauge
	members        metric.Int64ObservableGauge
	clientDur      rpcconv.ClientCallDuration
	serverDur      rpcconv.ServerCallDuration

	// Attribute options fixed at construction, passed as slices
	// (opts...), so that recording them allocates nothing.
	bytesIn, bytesOut                         []metric.AddOption
	refusedFailover, refusedRetry, refusedHdg []metric.AddOption

	methods    sync.Map     // "service/method" → struct{}: labels in use
	numMethods atomic.Int64 // entries in methods
	optSets    sync.Map     // optKey → *optSet
	numOptSets atomic.Int64 // entries in optSets
	reg        metric.Registration
}

func newNodeMetrics(mp metric.MeterProvider) *nodeMetrics {
	m := mp.Meter("github.com/aegisipc/aegis")
	nm := &nodeMetrics{
		bytesIn:         addAttr("aegis.direction", "in"),
		bytesOut:        addAttr("aegis.direction", "out"),
		refusedFailover: addAttr("aegis.kind", "failover"),
		refusedRetry:    addAttr("aegis.kind", "retry"),
		refusedHdg:      addAttr("aegis.kind", "hedge"),
	}
	// Instrument creation only fails on invalid names; ours are constant,
	// and a failed one is a no-op instrument.
	counters := []struct {
		dst        *metric.Int64Counter
		name, desc string
	}{
		{&nm.gossipDropped, "aegis.gossip.dropped", "gossip messages dropped as malformed or of an unknown version"},
		{&nm.gossipBytes, "aegis.gossip.bytes", "bytes of Aegis gossip (records, heartbeats, push/pull state) sent and received, by aegis.direction; memberlist's probes are not counted"},
		{&nm.heartbeatsSent, "aegis.heartbeat.sent", "heartbeats originated by this node"},
		{&nm.heartbeatsRecv, "aegis.heartbeat.received", "heartbeats received about other nodes' instances"},
		{&nm.duplicates, "aegis.call.duplicates", "calls answered from the dedup cache instead of running the handler again (dedup hits)"},
		{&nm.sameRetries, "aegis.call.same_instance_retries", "retries on the same instance with the same message ID"},
		{&nm.dedupEvictions, "aegis.call.dedup_evictions", "dedup entries evicted by the window or the bound"},
		{&nm.hedges, "aegis.call.hedges", "hedged attempts sent to a second instance"},
		{&nm.transitions, "aegis.health.transitions", "instance status changes seen by this node, by aegis.from, aegis.to and aegis.reason"},
		{&nm.ejections, "aegis.call.ejections", "instances this node's passive ejection took out of its routing pool, by aegis.service"},
		{&nm.calls, "aegis.calls", "Call and CallWithFailover calls made, by aegis.service, aegis.method and aegis.outcome"},
		{&nm.attempts, "aegis.call.attempts", "tries of calls, by aegis.service, aegis.attempt (first, retry, failover, hedge) and aegis.outcome"},
		{&nm.exhausted, "aegis.call.failovers_exhausted", "CallWithFailover calls that failed after more than one try, by aegis.service and aegis.reason"},
		{&nm.budgetRefused, "aegis.retry_budget.refusals", "retries, failovers and hedges the retry budget refused, by aegis.kind"},
	}
	for _, c := range counters {
		*c.dst, _ = m.Int64Counter(c.name, metric.WithDescription(c.desc))
	}
	nm.instances, _ = m.Int64ObservableGauge("aegis.instances", metric.WithDescription("instances this node knows, by aegis.service and aegis.status"))
	nm.members, _ = m.Int64ObservableGauge("aegis.members", metric.WithDescription("cluster members this node knows, by aegis.state (alive, suspect, failed)"))
	nm.clientDur, _ = rpcconv.NewClientCallDuration(m)
	nm.serverDur, _ = rpcconv.NewServerCallDuration(m)
	return nm
}

// addAttr returns the AddOptions of one fixed attribute.
func addAttr(key, value string) []metric.AddOption {
	return []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String(key, value)))}
}

// observe registers the callback of the observable gauges, which read n's
// registry and members at each collection; unobserve removes it.
func (nm *nodeMetrics) observe(mp metric.MeterProvider, n *Node) {
	m := mp.Meter("github.com/aegisipc/aegis")
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		n.observeGauges(o, nm)
		return nil
	}, nm.instances, nm.members)
	if err == nil {
		nm.reg = reg
	}
}

func (nm *nodeMetrics) unobserve() {
	if nm.reg != nil {
		_ = nm.reg.Unregister()
	}
}

// observeGauges reports instances by service and status, and members by
// state.
func (n *Node) observeGauges(o metric.Observer, nm *nodeMetrics) {
	type svcStatus struct {
		service string
		status  Status
	}
	counts := map[svcStatus]int64{}
	n.reg.mu.RLock()
	for k, e := range n.reg.entries {
		counts[svcStatus{k.service, e.status}]++
	}
	n.reg.mu.RUnlock()
	for k, c := range counts {
		o.ObserveInt64(nm.instances, c, metric.WithAttributes(attribute.String("aegis.service", k.service),
			attribute.String("aegis.status", k.status.String())))
	}
	states := map[string]int64{"alive": 0, "suspect": 0, "failed": 0}
	for _, m := range n.adminMembers() {
		states[m.State]++
	}
	for s, c := range states {
		o.ObserveInt64(nm.members, c, metric.WithAttributes(attribute.String("aegis.state", s)))
	}
}

// emit publishes a registry event, counts what it says (status
// transitions and passive ejections), and wakes the role loop when a role
// group changed (a promotion may be due).
func (n *Node) emit(e Event) {
	n.met.event(e)
	n.bus.publish(e)
	if e.Instance.Role != RoleNone || e.Type == EventRoleChanged {
		n.kickRoles()
	}
}

func (nm *nodeMetrics) event(e Event) {
	switch e.Type {
	case EventStatusChanged:
		if nm.transitions.Enabled(bg) {
			nm.transitions.Add(bg, 1, metric.WithAttributes(attribute.String("aegis.from", e.OldStatus.String()),
				attribute.String("aegis.to", e.NewStatus.String()), attribute.String("aegis.reason", e.Reason)))
		}
	case EventEjected:
		if nm.ejections.Enabled(bg) {
			nm.ejections.Add(bg, 1, metric.WithAttributes(attribute.String("aegis.service", e.Instance.Service)))
		}
	}
}

// callsOn reports whether call-level measurements are wanted.
func (nm *nodeMetrics) callsOn(ctx context.Context) bool {
	return nm.clientDur.Enabled(ctx) || nm.calls.Enabled(ctx)
}

// methodLabel returns the rpc.method value of a call: "service/method",
// or "_OTHER" once the node reports maxMethodLabels distinct ones.
func (nm *nodeMetrics) methodLabel(service, method string) string {
	label := service + "/" + method
	if _, ok := nm.methods.Load(label); ok {
		return label
	}
	if nm.numMethods.Add(1) > maxMethodLabels {
		nm.numMethods.Add(-1)
		return "_OTHER"
	}
	if _, loaded := nm.methods.LoadOrStore(label, struct{}{}); loaded {
		nm.numMethods.Add(-1)
	}
	return label
}

// optKey identifies one combination of attribute values; optSets caches
// the options recording them, so that a measurement allocates nothing for
// its attributes after the first with the same values. Its size is bounded
// like the values: services × capped methods × fixed outcome lists.
type optKey struct {
	kind         uint8 // which instrument(s): optCall, optAttempt, optServer
	service, sub string
	outcome      string
}

const (
	optCall uint8 = iota
	optAttempt
	optServer
)

// optSet is the cached options of one optKey.
type optSet struct {
	record []metric.RecordOption // for a duration histogram
	add    []metric.AddOption    // for a counter
}

// options returns the cached options of k, building them with attrs the
// first time.
func (nm *nodeMetrics) options(k optKey, attrs func() (hist, counter []attribute.KeyValue)) *optSet {
	if v, ok := nm.optSets.Load(k); ok {
		return v.(*optSet)
	}
	h, c := attrs()
	set := &optSet{record: []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(h...))},
		add: []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(c...))}}
	// Keys carry raw method names (a peer chooses those of the calls it
	// sends): past the bound, options are built for each measurement and
	// not kept.
	if nm.numOptSets.Add(1) > maxOptSets {
		nm.numOptSets.Add(-1)
		return set
	}
	v, loaded := nm.optSets.LoadOrStore(k, set)
	if loaded {
		nm.numOptSets.Add(-1)
	}
	return v.(*optSet)
}

// recordCall records one finished Call or CallWithFailover.
func (nm *nodeMetrics) recordCall(ctx context.Context, service, method string, err error, d time.Duration) {
	outcome := errorType(err)
	opts := nm.options(optKey{kind: optCall, service: service, sub: method, outcome: outcome}, func() (h, c []attribute.KeyValue) {
		label := nm.methodLabel(service, method)
		h = []attribute.KeyValue{attribute.String("rpc.system.name", string(rpcSystem)), attribute.String("rpc.method", label)}
		if err != nil {
			h = append(h, attribute.String("error.type", outcome))
		}
		c = []attribute.KeyValue{attribute.String("aegis.service", service), attribute.String("aegis.method", label),
			attribute.String("aegis.outcome", outcome)}
		return h, c
	})
	nm.clientDur.Inst().Record(ctx, d.Seconds(), opts.record...)
	nm.calls.Add(ctx, 1, opts.add...)
	var fe *FailoverError
	if err != nil && errors.As(err, &fe) && nm.exhausted.Enabled(ctx) {
		nm.exhausted.Add(ctx, 1, metric.WithAttributes(attribute.String("aegis.service", service),
			attribute.String("aegis.reason", outcome)))
	}
}

// recordAttempt records one try of a call.
func (nm *nodeMetrics) recordAttempt(ctx context.Context, inst *Instance, o *callOptions, try int, oc outcome) {
	if !nm.attempts.Enabled(ctx) {
		return
	}
	kind := attemptKind(o, try)
	opts := nm.options(optKey{kind: optAttempt, service: inst.Service, sub: kind, outcome: oc.String()}, func() (h, c []attribute.KeyValue) {
		return nil, []attribute.KeyValue{attribute.String("aegis.service", inst.Service),
			attribute.String("aegis.attempt", kind), attribute.String("aegis.outcome", oc.String())}
	})
	nm.attempts.Add(ctx, 1, opts.add...)
}

// attemptKind names a try: "first", "retry" (same instance, same message
// ID), "failover" (first try on another instance) or "hedge".
func attemptKind(o *callOptions, try int) string {
	switch {
	case try > 0:
		return "retry"
	case o.hedge:
		return "hedge"
	case o.failover:
		return "failover"
	}
	return "first"
}

// recordServer records one call served by a local instance; known says
// whether the addressed instance is served here (else neither its service
// nor its method is reported).
func (nm *nodeMetrics) recordServer(ctx context.Context, req *rpc.Request, known bool, resp *rpc.Response, d time.Duration) {
	service, method, errType := "", "", ""
	if known {
		service, method = req.Service, req.Method
	}
	if resp.Err != nil {
		errType = remoteCodeLabel(resp.Err.Code)
	}
	opts := nm.options(optKey{kind: optServer, service: service, sub: method, outcome: errType}, func() (h, c []attribute.KeyValue) {
		label := "_OTHER"
		if known {
			label = nm.methodLabel(service, method)
		}
		h = []attribute.KeyValue{attribute.String("rpc.system.name", string(rpcSystem)), attribute.String("rpc.method", label)}
		if errType != "" {
			h = append(h, attribute.String("error.type", errType))
		}
		return h, nil
	})
	nm.serverDur.Inst().Record(ctx, d.Seconds(), opts.record...)
}

// remoteCodes are the remote error codes reported as themselves; others
// (a handler's own codes) are reported as "other".
var remoteCodes = []string{CodeUnavailable, CodeHandler, CodePanic, CodeUnknownMethod, CodeTooLarge, CodeDeadline, CodeInProgress, CodeBadRequest}

func remoteCodeLabel(code string) string {
	if slices.Contains(remoteCodes, code) {
		return code
	}
	return "other"
}

// errorType classifies a call's error for the error.type and
// aegis.outcome attributes: "ok" for nil, else one of a fixed set. A
// FailoverError is classified by why it stopped, or else by its last try.
func errorType(err error) string {
	var fe *FailoverError
	if errors.As(err, &fe) {
		switch {
		case fe.Err != nil:
			err = fe.Err
		case len(fe.Attempts) > 0:
			err = fe.Attempts[len(fe.Attempts)-1].Err
		}
	}
	var re *RemoteError
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrRetryBudgetExhausted):
		return "retry_budget_exhausted"
	case errors.Is(err, ErrNoHealthyInstances):
		return "no_healthy_instances"
	case errors.Is(err, ErrServiceNotFound):
		return "service_not_found"
	case errors.Is(err, ErrShutdown):
		return "shutdown"
	case errors.Is(err, ErrMessageTooLarge):
		return "message_too_large"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrInstanceUnavailable):
		return "unavailable"
	case errors.As(err, &re):
		return "remote_" + remoteCodeLabel(re.Code)
	}
	return "other"
}
