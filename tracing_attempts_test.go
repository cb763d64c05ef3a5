package aegis

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/aegisipc/aegis/internal/testutil"
)

// spanAttr returns the value of key among s's attributes.
func spanAttr(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// TestTraceAcrossAFailover: with the SDK and an in-memory span recorder,
// one call that fails over makes one trace: the client span on the
// caller, an attempt span per instance tried (its instance, node, kind and
// outcome), and the callee's server span under the attempt that reached
// it, the trace context carried by Config.Propagator (W3C).
func TestTraceAcrossAFailover(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.TracerProvider = tp
		cfg.Propagator = propagation.TraceContext{}
		cfg.Balancer = ConsistentHash()
		cfg.HedgeDelay = -1
	})
	c.waitConverged(10 * time.Second)
	key := keyFor(t, c.nodes[0], "inst-1")
	require.NoError(t, c.nodes[1].Shutdown())

	_, err := c.nodes[0].CallWithFailover(context.Background(), "svc", "echo", []byte("x"), WithKey(key), WithMessageID("order-1"))
	require.NoError(t, err)

	var client sdktrace.ReadOnlySpan
	var attempts, servers []sdktrace.ReadOnlySpan
	testutil.Eventually(t, 5*time.Second, func() bool {
		client, attempts, servers = nil, nil, nil
		for _, s := range rec.Ended() {
			switch {
			case s.Name() == "svc/echo" && s.SpanKind() == trace.SpanKindClient:
				client = s
			case s.Name() == "aegis.attempt svc":
				attempts = append(attempts, s)
			case s.Name() == "svc/echo" && s.SpanKind() == trace.SpanKindServer:
				servers = append(servers, s)
			}
		}
		return client != nil && len(attempts) == 2 && len(servers) == 1
	}, "a client span, two attempt spans and a server span ended")

	tid := client.SpanContext().TraceID()
	for _, a := range attempts {
		assert.Equal(t, tid, a.SpanContext().TraceID())
		assert.Equal(t, client.SpanContext().SpanID(), a.Parent().SpanID(), "attempts are children of the call's span")
	}
	first, second := attempts[0], attempts[1]
	assert.Equal(t, "inst-1", spanAttr(first, "aegis.instance").AsString())
	assert.Equal(t, "node-01", spanAttr(first, "aegis.node").AsString())
	assert.Equal(t, "first", spanAttr(first, "aegis.attempt").AsString())
	assert.Equal(t, "dial-refused", spanAttr(first, "aegis.outcome").AsString())
	assert.Equal(t, "failover", spanAttr(second, "aegis.attempt").AsString())
	assert.Equal(t, "ok", spanAttr(second, "aegis.outcome").AsString())
	assert.NotEqual(t, "inst-1", spanAttr(second, "aegis.instance").AsString())

	srv := servers[0]
	assert.Equal(t, tid, srv.SpanContext().TraceID(), "one trace across nodes")
	assert.Equal(t, second.SpanContext().SpanID(), srv.Parent().SpanID(), "the server span is a child of the attempt that reached it")
	assert.True(t, srv.Parent().IsRemote())
	assert.Equal(t, spanAttr(second, "aegis.instance").AsString(), spanAttr(srv, "aegis.instance").AsString())
	assert.False(t, spanAttr(srv, "aegis.dedup_hit").AsBool())

	// The same message ID again, to the instance that ran it: the server
	// span marks the dedup hit.
	_, err = c.nodes[0].Call(context.Background(), "svc", "echo", []byte("x"), WithKey(key), WithMessageID("order-1"),
		WithExclude("inst-1"))
	require.NoError(t, err)
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, s := range rec.Ended() {
			if s.SpanKind() == trace.SpanKindServer && spanAttr(s, "aegis.dedup_hit").AsBool() {
				return true
			}
		}
		return false
	}, "a server span marked as a dedup hit")
}

// TestPanicLogCarriesTraceID: the log record of a handler's panic names
// the trace of the call, so it can be found from the trace and back.
func TestPanicLogCarriesTraceID(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	var logs syncBuf
	c := newCluster(t, 2, false, func(cfg *Config) {
		cfg.TracerProvider = tp
		cfg.Propagator = propagation.TraceContext{}
		cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	c.waitConverged(10 * time.Second)
	_, err := c.nodes[1].Register(context.Background(), Service{Name: "boom", InstanceID: "boom-1",
		Handler: func(context.Context, *Request) ([]byte, error) { panic("kaboom") }})
	require.NoError(t, err)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(c.nodes[0].HealthyInstances("boom")) == 1 }, "boom visible")
	_, err = c.nodes[0].Call(context.Background(), "boom", "m", nil)
	require.Error(t, err)

	var tid string
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, s := range rec.Ended() {
			if s.Name() == "boom/m" && s.SpanKind() == trace.SpanKindClient {
				tid = s.SpanContext().TraceID().String()
			}
		}
		return tid != ""
	}, "client span ended")
	var found bool
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"msg":"handler panicked"`) {
			found = true
			assert.Contains(t, line, `"trace_id":"`+tid+`"`)
		}
	}
	assert.True(t, found, "a handler-panicked record:\n%s", logs.String())
}

// syncBuf is a bytes.Buffer safe for concurrent writers.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
