package aegis

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/aegisipc/aegis/internal/testutil"
)

// recorder is a minimal recording TracerProvider for tests.
type recorder struct {
	embedded.TracerProvider
	mu    sync.Mutex
	spans []*recSpan // ended spans
}

func (r *recorder) Tracer(string, ...trace.TracerOption) trace.Tracer { return &recTracer{r: r} }

func (r *recorder) ended() []*recSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*recSpan(nil), r.spans...)
}

type recTracer struct {
	embedded.Tracer
	r *recorder
}

func (t *recTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	cfg := trace.NewSpanStartConfig(opts...)
	parent := trace.SpanContextFromContext(ctx)
	var tid trace.TraceID
	var sid trace.SpanID
	_, _ = rand.Read(sid[:])
	if parent.IsValid() {
		tid = parent.TraceID()
	} else {
		_, _ = rand.Read(tid[:])
	}
	s := &recSpan{r: t.r, name: name, kind: cfg.SpanKind(), parent: parent,
		sc: trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})}
	return trace.ContextWithSpan(ctx, s), s
}

type recSpan struct {
	embedded.Span
	r      *recorder
	name   string
	kind   trace.SpanKind
	parent trace.SpanContext
	sc     trace.SpanContext
	status codes.Code
}

func (s *recSpan) End(...trace.SpanEndOption) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	s.r.spans = append(s.r.spans, s)
}
func (s *recSpan) AddEvent(string, ...trace.EventOption)   {}
func (s *recSpan) AddLink(trace.Link)                      {}
func (s *recSpan) IsRecording() bool                       { return true }
func (s *recSpan) RecordError(error, ...trace.EventOption) {}
func (s *recSpan) SpanContext() trace.SpanContext          { return s.sc }
func (s *recSpan) SetStatus(c codes.Code, _ string)        { s.status = c }
func (s *recSpan) SetName(n string)                        { s.name = n }
func (s *recSpan) SetAttributes(...attribute.KeyValue)     {}
func (s *recSpan) TracerProvider() trace.TracerProvider    { return s.r }

// TestTracing: with a recording TracerProvider, a call makes a client span
// on the caller, an attempt span under it, and a server span on the callee
// in the same trace, the server span a child of the attempt span.
func TestTracing(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })
	rec := &recorder{}
	c := newCluster(t, 2, false, func(cfg *Config) { cfg.TracerProvider = rec })
	c.waitConverged(10 * time.Second)

	_, err := c.nodes[0].CallWithFailover(context.Background(), "svc", "echo", []byte("x"), WithExclude("inst-0"))
	require.NoError(t, err)
	_, err = c.nodes[0].Call(context.Background(), "nope", "echo", nil)
	require.ErrorIs(t, err, ErrServiceNotFound)

	var client, server, failed, attempt *recSpan
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, s := range rec.ended() {
			switch {
			case s.name == "svc/echo" && s.kind == trace.SpanKindClient:
				client = s
			case s.name == "svc/echo" && s.kind == trace.SpanKindServer:
				server = s
			case s.name == "nope/echo":
				failed = s
			case s.name == "aegis.attempt svc":
				attempt = s
			}
		}
		return client != nil && server != nil && failed != nil && attempt != nil
	}, "client, server and failed spans ended")
	require.Equal(t, client.sc.TraceID(), server.sc.TraceID(), "one trace across nodes")
	require.Equal(t, client.sc.SpanID(), attempt.parent.SpanID(), "the attempt span is the client span's child")
	require.Equal(t, attempt.sc.SpanID(), server.parent.SpanID(), "the server span is the attempt span's child")
	require.Equal(t, codes.Error, failed.status)
	for _, s := range rec.ended() {
		require.NotEqual(t, "aegis.probe", s.name, "the probe span is never ended")
	}
}

func TestNoTracingWithoutARecordingProvider(t *testing.T) {
	require.Nil(t, tracerFor(noop.NewTracerProvider()))
	require.NotNil(t, tracerFor(&recorder{}))
}
