// This file holds the call spans: a client span per Call or
// CallWithFailover and a server span per handled call, linked across nodes
// by the trace context carried in the request headers.

package aegis

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/aegisipc/aegis/internal/rpc"
)

// tracerFor returns the tracer calls use, or nil when tp hands out spans
// that record nothing (the otel global provider before SetTracerProvider,
// or a no-op provider): then calls skip tracing and pay nothing for it. The
// probe span is never ended, so no exporter sees it.
func tracerFor(tp trace.TracerProvider) trace.Tracer {
	t := tp.Tracer("github.com/aegisipc/aegis")
	_, probe := t.Start(context.Background(), "aegis.probe")
	if !probe.IsRecording() {
		return nil
	}
	return t
}

// callFunc is the caller's Call or CallWithFailover after options.
type callFunc func(ctx context.Context, service, method string, payload []byte, o *callOptions) ([]byte, error)

// instrumented runs call inside a client span named after api (when
// tracing is on) and records its metrics (when wanted). It takes the
// options by value: a pointer to the caller's would make them escape to
// the heap on every call, instrumented or not.
func (n *Node) instrumented(ctx context.Context, api, service, method string, payload []byte, o callOptions, call callFunc) ([]byte, error) {
	start := time.Now()
	var span trace.Span
	if n.tracer != nil {
		ctx, span = n.startCallSpan(ctx, api, service, method, &o)
	}
	out, err := call(ctx, service, method, payload, &o)
	if n.met.callsOn(ctx) {
		n.met.recordCall(ctx, service, method, err, time.Since(start))
	}
	if span != nil {
		endSpan(span, err)
	}
	return out, err
}

// startCallSpan starts the client span of one call; each attempt's span
// (startAttemptSpan) is its child and carries the trace context.
func (n *Node) startCallSpan(ctx context.Context, api, service, method string, _ *callOptions) (context.Context, trace.Span) {
	return n.tracer.Start(ctx, service+"/"+method, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("rpc.system", "aegis"), attribute.String("rpc.system.name", "aegis"),
			attribute.String("rpc.service", service), attribute.String("rpc.method", service+"/"+method), attribute.String("aegis.api", api)))
}

// endSpan ends a client span with the call's error.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// startAttemptSpan starts the span of one try of a call, a child of the
// call's span, and returns the request headers with its trace context
// added (a copy: the caller's map is shared by every try).
func (c *caller) startAttemptSpan(ctx context.Context, inst *Instance, o *callOptions, try int) (context.Context, trace.Span, map[string]string) {
	ctx, span := c.tracer.Start(ctx, "aegis.attempt "+inst.Service, trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attribute.String("aegis.instance", inst.ID), attribute.String("aegis.node", inst.Node),
			attribute.String("aegis.attempt", attemptKind(o, try)), attribute.Int("aegis.try", try),
			attribute.String("server.address", inst.Addr)))
	h := make(map[string]string, len(o.header)+2)
	for k, v := range o.header {
		h[k] = v
	}
	c.prop.Inject(ctx, propagation.MapCarrier(h))
	return ctx, span, h
}

// endAttemptSpan ends an attempt's span with its outcome.
func endAttemptSpan(span trace.Span, oc outcome, err error) {
	span.SetAttributes(attribute.String("aegis.outcome", oc.String()))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// startServerSpan starts the server span of one handled call, as a child
// of the caller's attempt span when the request carries its trace context.
func startServerSpan(ctx context.Context, tracer trace.Tracer, prop propagation.TextMapPropagator, req *rpc.Request) (context.Context, trace.Span) {
	if len(req.Header) > 0 {
		ctx = prop.Extract(ctx, propagation.MapCarrier(req.Header))
	}
	return tracer.Start(ctx, req.Service+"/"+req.Method, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("rpc.system", "aegis"), attribute.String("rpc.system.name", "aegis"),
			attribute.String("rpc.service", req.Service), attribute.String("rpc.method", req.Service+"/"+req.Method),
			attribute.String("aegis.instance", req.InstanceID), attribute.Bool("aegis.dedup_hit", false)))
}

// endServerSpan ends a server span with the handler's outcome.
func endServerSpan(span trace.Span, e *rpc.ErrorInfo) {
	if e != nil {
		span.SetAttributes(attribute.String("aegis.error_code", e.Code))
		span.SetStatus(codes.Error, e.Message)
	}
	span.End()
}

// traceLogAttrs returns the trace_id and span_id of ctx's span as log
// attributes, so a call-related log record can be found from its trace
// (none when ctx carries no valid span).
func traceLogAttrs(ctx context.Context) []any {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return nil
	}
	return []any{"trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String()}
}
