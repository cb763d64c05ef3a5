package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The paired measurement compares aegis variants whose cost differs by a few
// percent at most: Call, CallWithFailover, and Call to an instance whose node
// keeps no dedup cache. Measured one after the other, as the systems are,
// such a difference drowns in what drifts between runs on a shared machine
// (here ±5–10% from one run to the next). Here one node A calls two server
// nodes in the same process, and the variants take turns every few calls
// (latency) or every few milliseconds (throughput), so drift hits them all
// alike and cancels out of their ratios.

const (
	pairedBlock = 64                    // sequential calls per variant turn
	pairedPhase = 50 * time.Millisecond // length of a throughput turn
)

// variant is one way of making the same echo call.
type variant struct {
	key, name string
	call      callFn
}

// pairedFigures is what one round of the paired measurement found.
type pairedFigures struct {
	lat  map[string]result  // per variant: interleaved sequential calls
	tput map[string]float64 // per variant: calls/s during its turns
}

// startVariants starts server node B (dedup on, service "echo"), server
// node C (dedup off, service "echo-nodedup") and caller node A, and returns
// the variants, all calling from A.
func startVariants(otel bool) ([]variant, func(), error) {
	b, err := startEchoNode("b", "echo", true)
	if err != nil {
		return nil, nil, err
	}
	c, err := startEchoNode("c", "echo-nodedup", false)
	if err != nil {
		_ = b.Shutdown()
		return nil, nil, err
	}
	a, err := startCaller([]string{b.Addr(), c.Addr()}, "echo", "echo-nodedup")
	if err != nil {
		_ = c.Shutdown()
		_ = b.Shutdown()
		return nil, nil, err
	}
	stop := func() {
		_ = a.Shutdown()
		_ = c.Shutdown()
		_ = b.Shutdown()
	}
	vs := []variant{
		{"call", "Call", func(ctx context.Context, p []byte) ([]byte, error) { return a.Call(ctx, "echo", "echo", p) }},
		{"failover", "CallWithFailover", func(ctx context.Context, p []byte) ([]byte, error) {
			return a.CallWithFailover(ctx, "echo", "echo", p)
		}},
		{"nodedup", "Call, dedup off", func(ctx context.Context, p []byte) ([]byte, error) {
			return a.Call(ctx, "echo-nodedup", "echo", p)
		}},
	}
	if !otel {
		return vs, stop, nil
	}
	ovs, ostop, err := otelVariants(b.Addr())
	if err != nil {
		stop()
		return nil, nil, err
	}
	return append(vs, ovs...), func() { ostop(); stop() }, nil
}

// otelVariants starts caller nodes A2 (SDK metrics) and A3 (SDK metrics
// and traces), both calling B's echo at addr.
func otelVariants(addr string) ([]variant, func(), error) {
	a2, stopMetrics, err := startOTelCaller(false, []string{addr}, "echo")
	if err != nil {
		return nil, nil, err
	}
	a3, stopOTel, err := startOTelCaller(true, []string{addr}, "echo")
	if err != nil {
		stopMetrics()
		return nil, nil, err
	}
	return []variant{
		{"otelm", "Call, OpenTelemetry SDK metrics", func(ctx context.Context, p []byte) ([]byte, error) {
			return a2.Call(ctx, "echo", "echo", p)
		}},
		{"otel", "Call, OpenTelemetry SDK metrics and traces", func(ctx context.Context, p []byte) ([]byte, error) {
			return a3.Call(ctx, "echo", "echo", p)
		}},
	}, func() { stopOTel(); stopMetrics() }, nil
}

// runPaired runs one round of the paired measurement: latency, then
// throughput, each for -duration per variant after one -warmup.
func runPaired(o *options) (pairedFigures, error) {
	vs, stop, err := startVariants(o.otel)
	if err != nil {
		return pairedFigures{}, fmt.Errorf("start: %w", err)
	}
	defer func() {
		stop()
		runtime.GC()
	}()
	var f pairedFigures
	if o.latency {
		if f.lat, err = pairedLatency(vs, o.warmup, o.duration); err != nil {
			return f, fmt.Errorf("latency: %w", err)
		}
	}
	if o.throughput {
		if f.tput, err = pairedThroughput(vs, o.callers, o.warmup, o.duration); err != nil {
			return f, fmt.Errorf("throughput: %w", err)
		}
	}
	return f, nil
}

// pairedLatency makes sequential calls from one goroutine, the variants
// taking turns every pairedBlock calls, until each had d of calls.
func pairedLatency(vs []variant, warmup, d time.Duration) (map[string]result, error) {
	ctx := context.Background()
	payload := makePayload(latencyPayload)
	warm := 0
	for _, v := range vs {
		n, err := runFor(ctx, v.call, payload, warmup/time.Duration(len(vs)))
		if err != nil {
			return nil, fmt.Errorf("warmup %s: %w", v.name, err)
		}
		warm += n
	}
	lat := make([][]time.Duration, len(vs))
	spent := make([]time.Duration, len(vs))
	for i := range lat {
		lat[i] = make([]time.Duration, 0, estimateSlots(warm/len(vs), warmup/time.Duration(len(vs)), d))
	}
	runtime.GC()
	m0 := mallocs()
	start := time.Now()
	end := start.Add(d * time.Duration(len(vs)))
	for turn := 0; time.Now().Before(end); turn++ {
		i := turn % len(vs)
		v := vs[i]
		b0 := time.Now()
		for k := 0; k < pairedBlock; k++ {
			t0 := time.Now()
			out, err := v.call(ctx, payload)
			l := time.Since(t0)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v.name, err)
			}
			if len(out) != len(payload) {
				return nil, checkEcho(out, payload)
			}
			lat[i] = append(lat[i], l)
		}
		spent[i] += time.Since(b0)
	}
	m1 := mallocs()
	calls := 0
	for i := range lat {
		calls += len(lat[i])
	}
	out := make(map[string]result, len(vs))
	for i, v := range vs {
		r := newResult(lat[i], spent[i], 0)
		// Allocations are only known for the whole run: every variant
		// gets the average.
		r.allocs = float64(m1-m0) / float64(calls)
		out[v.key] = r
	}
	return out, nil
}

// pairedThroughput runs callers goroutines; a switcher moves them all from
// variant to variant every pairedPhase, and each call counts for the variant
// that was current when it started.
func pairedThroughput(vs []variant, callers int, warmup, d time.Duration) (map[string]float64, error) {
	ctx := context.Background()
	var cur atomic.Int32
	var stopped atomic.Bool
	counts := make([][]int64, callers) // per caller, per variant
	errs := make([]error, callers)
	var wg sync.WaitGroup
	run := func() {
		for c := 0; c < callers; c++ {
			counts[c] = make([]int64, len(vs))
			wg.Add(1)
			go func() {
				defer wg.Done()
				payload := makePayload(throughputPayload)
				for !stopped.Load() {
					i := cur.Load()
					out, err := vs[i].call(ctx, payload)
					if err != nil {
						errs[c] = fmt.Errorf("%s: %w", vs[i].name, err)
						return
					}
					if len(out) != len(payload) {
						errs[c] = checkEcho(out, payload)
						return
					}
					counts[c][i]++
				}
			}()
		}
	}
	switcher := func(total time.Duration) []time.Duration {
		spent := make([]time.Duration, len(vs))
		end := time.Now().Add(total)
		t := time.NewTicker(pairedPhase)
		defer t.Stop()
		last := time.Now()
		for turn := 0; ; turn++ {
			<-t.C
			now := time.Now()
			spent[turn%len(vs)] += now.Sub(last)
			last = now
			if !now.Before(end) {
				stopped.Store(true)
				return spent
			}
			cur.Store(int32((turn + 1) % len(vs)))
		}
	}
	check := func() error {
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}

	run()
	switcher(warmup)
	wg.Wait()
	if err := check(); err != nil {
		return nil, fmt.Errorf("warmup: %w", err)
	}
	stopped.Store(false)
	cur.Store(0)
	runtime.GC()
	run()
	spent := switcher(d * time.Duration(len(vs)))
	wg.Wait()
	if err := check(); err != nil {
		return nil, err
	}
	out := make(map[string]float64, len(vs))
	for i, v := range vs {
		var n int64
		for c := range counts {
			n += counts[c][i]
		}
		out[v.key] = float64(n) / spent[i].Seconds()
	}
	return out, nil
}

// line is the round's progress line.
func (f pairedFigures) line() string {
	var s string
	for _, k := range pairedKeys {
		if r, ok := f.lat[k]; ok {
			s += fmt.Sprintf(" %s p50 %s", k, fmtDur(r.p50))
		}
	}
	for _, k := range pairedKeys {
		if v, ok := f.tput[k]; ok {
			s += fmt.Sprintf(" %s %s calls/s", k, fmtRate(v))
		}
	}
	return s
}

// pairedKeys lists the variants in report order.
var pairedKeys = []string{"call", "failover", "nodedup", "otelm", "otel"}

// pairedSummary holds, per variant, medians over the rounds of the paired
// measurement, and the medians of the per-round ratios to Call.
type pairedSummary struct {
	rounds   int
	p50, p99 map[string]time.Duration
	tput     map[string]float64
	latRatio map[string]float64 // variant p50 ÷ Call p50, median over rounds
	tpRatio  map[string]float64 // variant calls/s ÷ Call calls/s, likewise
	allocs   float64
}

func summarizePaired(ps []pairedFigures) pairedSummary {
	s := pairedSummary{rounds: len(ps), p50: map[string]time.Duration{}, p99: map[string]time.Duration{},
		tput: map[string]float64{}, latRatio: map[string]float64{}, tpRatio: map[string]float64{}}
	if len(ps) == 0 {
		return s
	}
	var allocs []float64
	for _, k := range pairedKeys {
		var p50, p99 []time.Duration
		var tp, lr, tr []float64
		for _, p := range ps {
			if r, ok := p.lat[k]; ok {
				p50, p99 = append(p50, r.p50), append(p99, r.p99)
				lr = append(lr, float64(r.p50)/float64(p.lat["call"].p50))
				if k == "call" {
					allocs = append(allocs, r.allocs)
				}
			}
			if v, ok := p.tput[k]; ok {
				tp = append(tp, v)
				tr = append(tr, v/p.tput["call"])
			}
		}
		if len(p50) > 0 {
			s.p50[k], s.p99[k], s.latRatio[k] = median(p50), median(p99), median(lr)
		}
		if len(tp) > 0 {
			s.tput[k], s.tpRatio[k] = median(tp), median(tr)
		}
	}
	if len(allocs) > 0 {
		s.allocs = median(allocs)
	}
	return s
}

func (s pairedSummary) write(w io.Writer, o *options, rounds int) {
	if rounds == 0 {
		if o.paired && o.split {
			fmt.Fprintf(w, "The interleaved measurement of aegis variants does not run with -split.\n\n")
		}
		return
	}
	fmt.Fprintf(w, "Interleaved aegis variants (one caller node A; server node B keeps a dedup cache, node C none; latency: the variants take turns every %d sequential calls, %d-byte payload, %v of calls each; throughput: %d callers, %d-byte payload, all switching variant every %v, %v each; every figure and ratio is the median over %d round(s), ratios taken within each round):\n\n",
		pairedBlock, latencyPayload, o.duration, o.callers, throughputPayload, pairedPhase, o.duration, rounds)
	fmt.Fprintf(w, "| Variant | Latency p50 | Latency p99 | p50 ÷ Call's | Throughput (calls/s) | ÷ Call's |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|\n")
	for _, k := range pairedKeys {
		_, hasLat := s.p50[k]
		_, hasTput := s.tput[k]
		if !hasLat && !hasTput {
			continue
		}
		lat, tp := "– | – | –", "– | –"
		if _, ok := s.p50[k]; ok {
			lat = fmt.Sprintf("%s | %s | %.3f", fmtDur(s.p50[k]), fmtDur(s.p99[k]), s.latRatio[k])
		}
		if _, ok := s.tput[k]; ok {
			tp = fmt.Sprintf("%s | %.3f", fmtRate(s.tput[k]), s.tpRatio[k])
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", pairedName(k), lat, tp)
	}
	if s.allocs > 0 {
		fmt.Fprintf(w, "\nAllocations per call over the interleaved latency run, process-wide (three nodes' gossip included): %.2f.\n", s.allocs)
	}
	fmt.Fprintln(w)
}

func pairedName(k string) string {
	switch k {
	case "call":
		return "aegis Call"
	case "failover":
		return "aegis CallWithFailover"
	case "otelm":
		return "aegis Call, OTel SDK metrics, Prometheus exporter (node A2 → B)"
	case "otel":
		return "aegis Call, OTel SDK metrics and traces, all spans batched to the stdout exporter (node A3 → B)"
	}
	return "aegis Call, dedup off (node C)"
}

// targets judges CallWithFailover and dedup on the interleaved figures.
func (s pairedSummary) targets() []target {
	var ts []target
	t := target{goal: "CallWithFailover latency p50 within 5% of Call (≤ 1.05×), interleaved"}
	if r, ok := s.latRatio["failover"]; ok {
		t.known, t.met = true, r <= 1.05
		t.measured = fmt.Sprintf("%.3f× (%s vs %s)", r, fmtDur(s.p50["failover"]), fmtDur(s.p50["call"]))
	}
	ts = append(ts, t)
	t = target{goal: "CallWithFailover throughput within 5% of Call (≥ 0.95×), interleaved"}
	if r, ok := s.tpRatio["failover"]; ok {
		t.known, t.met = true, r >= 0.95
		t.measured = fmt.Sprintf("%.3f× (%s/s vs %s/s)", r, fmtRate(s.tput["failover"]), fmtRate(s.tput["call"]))
	}
	ts = append(ts, t)
	t = target{goal: "Dedup bookkeeping adds < 5% of Call's p50, interleaved"}
	if r, ok := s.latRatio["nodedup"]; ok {
		// Call p50 ÷ no-dedup p50 is 1/r; the share of Call's p50 that
		// dedup adds is 1 − r.
		share := 1 - r
		t.known, t.met = true, share < 0.05
		t.measured = fmt.Sprintf("%.1f%% (%s with dedup vs %s without)", 100*share, fmtDur(s.p50["call"]), fmtDur(s.p50["nodedup"]))
	}
	ts = append(ts, t)
	return ts
}
