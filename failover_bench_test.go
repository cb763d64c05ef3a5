package aegis

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// benchPair starts two nodes on loopback TCP, registers an echo instance of
// service "echo" on the second and returns the first, ready to call it.
func benchPair(b *testing.B, tune func(*Config)) *Node {
	b.Helper()
	mk := func(name string) *Node {
		cfg := DefaultConfig()
		cfg.NodeName = name
		cfg.BindAddr = "127.0.0.1:0"
		cfg.Gossip = LocalGossip()
		if tune != nil {
			tune(cfg)
		}
		nd, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = nd.Shutdown() })
		return nd
	}
	server, caller := mk("bench-server"), mk("bench-caller")
	if _, err := server.Register(context.Background(), Service{Name: "echo", Handler: echoHandler}); err != nil {
		b.Fatal(err)
	}
	if _, err := caller.Join(context.Background(), server.Addr()); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(caller.HealthyInstances("echo")) != 1 {
		if time.Now().After(deadline) {
			b.Fatal("echo instance not visible")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return caller
}

// BenchmarkCall measures one sequential 64-byte echo call over loopback TCP,
// with and without receiver-side deduplication, through Call and
// CallWithFailover. Allocations are the whole process's: caller and server.
func BenchmarkCall(b *testing.B) {
	payload := make([]byte, 64)
	for _, bc := range []struct {
		name     string
		dedup    bool
		failover bool
		sdk      bool // an SDK meter provider with a reader on both nodes
	}{
		{"Call/dedup", true, false, false},
		{"Call/nodedup", false, false, false},
		{"CallWithFailover/dedup", true, true, false},
		{"CallWithFailover/dedup/sdk-metrics", true, true, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			caller := benchPair(b, func(cfg *Config) {
				if !bc.dedup {
					cfg.DedupMaxEntries = 0
				}
				if bc.sdk {
					mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
					b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
					cfg.MeterProvider = mp
				}
			})
			ctx := context.Background()
			call := caller.Call
			if bc.failover {
				call = caller.CallWithFailover
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := call(ctx, "echo", "echo", payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCallParallel is BenchmarkCall with concurrent callers and 1 KiB
// payloads.
func BenchmarkCallParallel(b *testing.B) {
	payload := make([]byte, 1024)
	for _, bc := range []struct {
		name  string
		dedup bool
	}{{"dedup", true}, {"nodedup", false}} {
		b.Run(bc.name, func(b *testing.B) {
			caller := benchPair(b, func(cfg *Config) {
				if !bc.dedup {
					cfg.DedupMaxEntries = 0
				}
			})
			b.ReportAllocs()
			b.SetParallelism(32)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := caller.Call(context.Background(), "echo", "echo", payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
