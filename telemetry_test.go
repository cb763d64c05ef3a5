package aegis

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/aegisipc/aegis/internal/rpc"
	"github.com/aegisipc/aegis/internal/testutil"
)

// meterReader is an in-memory metric reader with lookup helpers.
type meterReader struct {
	t *testing.T
	r *sdkmetric.ManualReader
}

func newMeterReader(t *testing.T) (*meterReader, *sdkmetric.MeterProvider) {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return &meterReader{t: t, r: r}, mp
}

// metric returns the named metric of the newest collection.
func (m *meterReader) metric(name string) (metricdata.Metrics, bool) {
	var rm metricdata.ResourceMetrics
	require.NoError(m.t, m.r.Collect(context.Background(), &rm))
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			if mt.Name == name {
				return mt, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// value sums the named counter's or gauge's points whose attributes
// include attrs; for a histogram it sums the counts.
func (m *meterReader) value(name string, attrs ...attribute.KeyValue) int64 {
	mt, ok := m.metric(name)
	if !ok {
		return 0
	}
	match := func(set attribute.Set) bool {
		for _, kv := range attrs {
			if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
				return false
			}
		}
		return true
	}
	var sum int64
	switch d := mt.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes) {
				sum += p.Value
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes) {
				sum += p.Value
			}
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes) {
				sum += int64(p.Count)
			}
		}
	default:
		m.t.Fatalf("metric %s has data of type %T", name, mt.Data)
	}
	return sum
}

func str(k, v string) attribute.KeyValue { return attribute.String(k, v) }

// TestMetricsThroughFailover: with an SDK reader, a failover moves the
// attempt, ejection, transition, call and duration instruments as it
// should, and the gauges report instances and members.
func TestMetricsThroughFailover(t *testing.T) {
	callerM, callerMP := newMeterReader(t)
	serverM, serverMP := newMeterReader(t)
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.EjectAfterFailures = 1
		cfg.HedgeDelay = -1
		cfg.HeartbeatInterval = 100 * time.Millisecond
		cfg.Balancer = ConsistentHash()
		switch cfg.NodeName {
		case "node-00":
			cfg.MeterProvider = callerMP
		case "node-02":
			cfg.MeterProvider = serverMP
		}
	})
	c.waitConverged(10 * time.Second)
	assert.Equal(t, int64(3), callerM.value("aegis.instances", str("aegis.service", "svc"), str("aegis.status", "healthy")))
	assert.Equal(t, int64(3), callerM.value("aegis.members", str("aegis.state", "alive")))
	testutil.Eventually(t, 5*time.Second, func() bool { return callerM.value("aegis.heartbeat.received") > 0 }, "heartbeats received")
	assert.Positive(t, callerM.value("aegis.heartbeat.sent"))
	assert.Positive(t, callerM.value("aegis.gossip.bytes", str("aegis.direction", "in")))
	assert.Positive(t, callerM.value("aegis.gossip.bytes", str("aegis.direction", "out")))

	// A key whose instance is inst-1, whose node then crashes: the call
	// fails over to another instance and inst-1 is ejected.
	key := keyFor(t, c.nodes[0], "inst-1")
	require.NoError(t, c.nodes[1].Shutdown())
	_, err := c.nodes[0].CallWithFailover(context.Background(), "svc", "echo", []byte("x"), WithKey(key))
	require.NoError(t, err)
	assert.Equal(t, int64(1), callerM.value("aegis.call.attempts", str("aegis.attempt", "first"), str("aegis.outcome", "dial-refused")))
	assert.Equal(t, int64(1), callerM.value("aegis.call.attempts", str("aegis.attempt", "failover"), str("aegis.outcome", "ok")))
	assert.Equal(t, int64(1), callerM.value("aegis.call.ejections", str("aegis.service", "svc")))
	assert.Equal(t, int64(1), callerM.value("aegis.calls", str("aegis.service", "svc"), str("aegis.method", "svc/echo"), str("aegis.outcome", "ok")))
	assert.Equal(t, int64(1), callerM.value("rpc.client.call.duration", str("rpc.system.name", "aegis"), str("rpc.method", "svc/echo")))

	// Every instance failing retryably: the failover runs out.
	for i, nd := range []*Node{c.nodes[0], c.nodes[2]} {
		_, err := nd.Register(context.Background(), Service{Name: "busy", InstanceID: []string{"b-0", "b-2"}[i],
			Handler: func(context.Context, *Request) ([]byte, error) { return nil, Retryable(errors.New("busy")) }})
		require.NoError(t, err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return len(c.nodes[0].HealthyInstances("busy")) == 2 }, "busy visible")
	_, err = c.nodes[0].CallWithFailover(context.Background(), "busy", "work", nil)
	var fe *FailoverError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, int64(1), callerM.value("aegis.call.failovers_exhausted", str("aegis.service", "busy"), str("aegis.reason", "no_healthy_instances")))
	assert.Equal(t, int64(1), callerM.value("aegis.calls", str("aegis.service", "busy"), str("aegis.outcome", "no_healthy_instances")))
	assert.Equal(t, int64(1), callerM.value("rpc.client.call.duration", str("rpc.method", "busy/work"), str("error.type", "no_healthy_instances")))
	assert.Equal(t, int64(1), serverM.value("rpc.server.call.duration", str("rpc.system.name", "aegis"), str("rpc.method", "busy/work"), str("error.type", "handler")))
	assert.Positive(t, serverM.value("rpc.server.call.duration", str("rpc.method", "svc/echo")))

	// The crashed node's instance turns unhealthy: one transition.
	testutil.Eventually(t, 15*time.Second, func() bool {
		return callerM.value("aegis.health.transitions", str("aegis.from", "healthy"), str("aegis.to", "unhealthy"), str("aegis.reason", "node-failed")) == 1
	}, "transition healthy -> unhealthy (node-failed) counted")
	assert.Equal(t, int64(1), callerM.value("aegis.instances", str("aegis.service", "svc"), str("aegis.status", "unhealthy")))
	assert.Equal(t, int64(1), callerM.value("aegis.members", str("aegis.state", "failed")))
}

// TestRetryBudgetRefusalsCounted: with no budget for retries, the refusal
// of a failover is counted.
func TestRetryBudgetRefusalsCounted(t *testing.T) {
	m, mp := newMeterReader(t)
	c := newCluster(t, 2, false, func(cfg *Config) {
		cfg.RetryBudgetRatio, cfg.RetryBudgetMinPerSecond, cfg.HedgeDelay = 0, 0, -1
		if cfg.NodeName == "node-00" {
			cfg.MeterProvider = mp
		}
	})
	c.waitConverged(10 * time.Second)
	for _, nd := range c.nodes {
		_, err := nd.Register(context.Background(), Service{Name: "busy", InstanceID: "b-" + nd.Name(),
			Handler: func(context.Context, *Request) ([]byte, error) { return nil, Retryable(errors.New("busy")) }})
		require.NoError(t, err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return len(c.nodes[0].HealthyInstances("busy")) == 2 }, "busy visible")
	_, err := c.nodes[0].CallWithFailover(context.Background(), "busy", "work", nil)
	require.ErrorIs(t, err, ErrRetryBudgetExhausted)
	assert.Equal(t, int64(1), m.value("aegis.retry_budget.refusals", str("aegis.kind", "failover")))
	assert.Equal(t, int64(1), m.value("aegis.call.failovers_exhausted", str("aegis.reason", "retry_budget_exhausted")))
}

// TestDedupMetrics: a duplicate answered from the cache is counted as a
// dedup hit on the callee.
func TestDedupMetrics(t *testing.T) {
	m, mp := newMeterReader(t)
	c := newCluster(t, 2, false, func(cfg *Config) {
		if cfg.NodeName == "node-01" {
			cfg.MeterProvider = mp
		}
	})
	c.waitConverged(10 * time.Second)
	for range 2 {
		_, err := c.nodes[0].Call(context.Background(), "svc", "echo", nil, WithExclude("inst-0"), WithMessageID("m-1"))
		require.NoError(t, err)
	}
	assert.Equal(t, int64(1), m.value("aegis.call.duplicates"))
}

// TestMethodLabelsBounded: beyond maxMethodLabels distinct methods, calls
// are reported under "_OTHER".
func TestMethodLabelsBounded(t *testing.T) {
	nm := newNodeMetrics(sdkmetric.NewMeterProvider())
	for i := range maxMethodLabels {
		require.NotEqual(t, "_OTHER", nm.methodLabel("s", string(rune('a'+i%26))+string(rune(i))))
	}
	assert.Equal(t, "_OTHER", nm.methodLabel("s", "one-too-many"))
	assert.Equal(t, "s/a\x00", nm.methodLabel("s", "a\x00"), "a known label stays")
}

// TestOptionCacheBounded: a peer sending calls with ever new method names
// to a served instance cannot grow the cached attribute options without
// bound; their measurements still count, under "_OTHER".
func TestOptionCacheBounded(t *testing.T) {
	m, mp := newMeterReader(t)
	nm := newNodeMetrics(mp)
	ctx := context.Background()
	for i := range maxOptSets + maxMethodLabels {
		req := &rpc.Request{Service: "svc", Method: fmt.Sprintf("m%d", i)}
		nm.recordServer(ctx, req, true, &rpc.Response{}, time.Millisecond)
	}
	assert.Equal(t, int64(maxOptSets), nm.numOptSets.Load(), "the cache stops at its bound")
	assert.Equal(t, int64(maxOptSets+maxMethodLabels), m.value("rpc.server.call.duration"), "every call counted")
	assert.Equal(t, int64(maxOptSets), m.value("rpc.server.call.duration", str("rpc.method", "_OTHER")),
		"methods past the label cap reported as _OTHER")
}

func TestErrorType(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{ErrNoHealthyInstances, "no_healthy_instances"},
		{&FailoverError{Attempts: []Attempt{{Err: ErrInstanceUnavailable}}, Err: ErrRetryBudgetExhausted}, "retry_budget_exhausted"},
		{&FailoverError{Attempts: []Attempt{{Err: ErrInstanceUnavailable}, {Err: ErrTimeout}}}, "timeout"},
		{&RemoteError{Code: CodePanic}, "remote_panic"},
		{&RemoteError{Code: "my-own-code"}, "remote_other"},
		{&RemoteError{Code: CodeUnavailable}, "unavailable"},
		{context.Canceled, "canceled"},
		{errors.New("what"), "other"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, errorType(tt.err), "%v", tt.err)
	}
}

// keyFor returns a routing key that ConsistentHash maps to instance id
// on nd.
func keyFor(t *testing.T, nd *Node, id string) string {
	for i := range 1000 {
		k := "k" + string(rune('a'+i%26)) + string(rune('0'+i/26%10)) + string(rune('0'+i/260))
		ri, err := nd.Route("svc", "echo", WithKey(k))
		require.NoError(t, err)
		if ri.Instance == id {
			return k
		}
	}
	t.Fatalf("no key routes to %s", id)
	return ""
}

// BenchmarkDisabledInstrumentation measures what one call pays for
// metrics when no SDK is installed (the otel global provider before
// SetMeterProvider): the Enabled checks of the client, attempt and server
// paths.
func BenchmarkDisabledInstrumentation(b *testing.B) {
	nm := newNodeMetrics(otel.GetMeterProvider())
	inst := &Instance{Service: "svc", ID: "i", Node: "n"}
	o := &callOptions{}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if nm.callsOn(ctx) {
			b.Fatal("enabled without an SDK")
		}
		nm.recordAttempt(ctx, inst, o, 0, outcomeOK)
		if nm.serverDur.Enabled(ctx) {
			b.Fatal("enabled without an SDK")
		}
	}
}

// TestHedgeAttemptsCounted: a hedged try is counted as such, with the
// hedge counter.
func TestHedgeAttemptsCounted(t *testing.T) {
	m, mp := newMeterReader(t)
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.HedgeDelay = 20 * time.Millisecond
		cfg.Balancer = ConsistentHash()
		if cfg.NodeName == "node-00" {
			cfg.MeterProvider = mp
		}
	})
	c.waitConverged(10 * time.Second)
	c.counting(func(ctx context.Context, req *Request) ([]byte, error) {
		if req.InstanceID == "c-1" {
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
		return req.Payload, nil
	})
	key := ""
	for i := 0; key == ""; i++ {
		k := fmt.Sprintf("k%d", i)
		ri, err := c.nodes[0].Route("count", "echo", WithKey(k))
		require.NoError(t, err)
		if ri.Instance == "c-1" {
			key = k
		}
	}
	_, err := c.nodes[0].CallWithFailover(context.Background(), "count", "echo", []byte("x"), WithKey(key))
	require.NoError(t, err)
	assert.Equal(t, int64(1), m.value("aegis.call.hedges"))
	assert.Equal(t, int64(1), m.value("aegis.call.attempts", str("aegis.service", "count"), str("aegis.attempt", "hedge"), str("aegis.outcome", "ok")))
	assert.Equal(t, int64(1), m.value("aegis.call.attempts", str("aegis.attempt", "first"), str("aegis.outcome", "canceled")))
}
