package main

import (
	"context"
	"io"

	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/aegisipc/aegis"
)

// startOTelCaller is startCaller with the OpenTelemetry SDK behind the
// node's providers, as a service exporting them would run it: metrics
// aggregated for the Prometheus exporter (read when scraped; nothing
// scrapes here) and, with traces, every span sampled and batched to the
// stdout exporter, writing its JSON to io.Discard, with the W3C
// propagator. stop shuts the node, then the providers, down.
func startOTelCaller(traces bool, addrs []string, services ...string) (*aegis.Node, func(), error) {
	exp, err := otelprom.New(otelprom.WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		return nil, nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	spans, err := stdouttrace.New(stdouttrace.WithWriter(io.Discard))
	if err != nil {
		return nil, nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(spans), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	shutdown := func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	}
	a, err := startTunedCaller(nil, func(cfg *aegis.Config) {
		cfg.MeterProvider = mp
		if traces {
			cfg.TracerProvider, cfg.Propagator = tp, propagation.TraceContext{}
		}
	}, addrs, services...)
	if err != nil {
		shutdown()
		return nil, nil, err
	}
	return a, func() { _ = a.Shutdown(); shutdown() }, nil
}
