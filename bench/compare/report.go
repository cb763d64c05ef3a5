package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// summary holds the per-figure medians over the rounds for one system.
type summary struct {
	latP50, latP99       time.Duration
	latAllocs            float64
	latCalls             float64
	tput                 float64
	tputP50, tputP99     time.Duration
	tputAllocs           float64
	tputCalls            float64
	tputMin, tputMax     float64 // spread of calls/s over the rounds
	latP50Min, latP50Max time.Duration
	hasLat, hasTput      bool
}

func median[T int | int64 | float64 | time.Duration](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func collect[T any](fs []figures, get func(figures) T) []T {
	out := make([]T, len(fs))
	for i, f := range fs {
		out[i] = get(f)
	}
	return out
}

func summarize(fs []figures) summary {
	tputs := collect(fs, func(f figures) float64 { return f.tput.perSecond })
	p50s := collect(fs, func(f figures) time.Duration { return f.lat.p50 })
	return summary{
		hasLat:     fs[0].hasLat,
		hasTput:    fs[0].hasTput,
		latP50:     median(p50s),
		latP99:     median(collect(fs, func(f figures) time.Duration { return f.lat.p99 })),
		latAllocs:  median(collect(fs, func(f figures) float64 { return f.lat.allocs })),
		latCalls:   median(collect(fs, func(f figures) float64 { return float64(f.lat.calls) })),
		tput:       median(tputs),
		tputP50:    median(collect(fs, func(f figures) time.Duration { return f.tput.p50 })),
		tputP99:    median(collect(fs, func(f figures) time.Duration { return f.tput.p99 })),
		tputAllocs: median(collect(fs, func(f figures) float64 { return f.tput.allocs })),
		tputCalls:  median(collect(fs, func(f figures) float64 { return float64(f.tput.calls) })),
		tputMin:    slices.Min(tputs),
		tputMax:    slices.Max(tputs),
		latP50Min:  slices.Min(p50s),
		latP50Max:  slices.Max(p50s),
	}
}

func fmtDur(d time.Duration) string {
	us := float64(d) / float64(time.Microsecond)
	switch {
	case us < 1000:
		return fmt.Sprintf("%.1f µs", us)
	default:
		return fmt.Sprintf("%.2f ms", us/1000)
	}
}

func fmtRate(v float64) string {
	// thousands separators
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func commandLine() string {
	parts := []string{"./" + filepath.Base(os.Args[0])}
	for _, a := range os.Args[1:] {
		if strings.ContainsAny(a, " \t'\"") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// target is one goal aegis is held to.
type target struct {
	goal, measured string
	met, known     bool
}

func report(w io.Writer, o *options, sel []system, res map[string][]figures, paired []pairedFigures) {
	sums := map[string]summary{}
	for k, fs := range res {
		sums[k] = summarize(fs)
	}

	if o.split {
		fmt.Fprintf(w, "## aegis direct calls vs. raw TCP, net/rpc and grpc-go (loopback, server in a child process)\n\n")
	} else {
		fmt.Fprintf(w, "## aegis direct calls vs. raw TCP, net/rpc and grpc-go (loopback, one process)\n\n")
	}
	fmt.Fprintf(w, "- command: `%s` (built with `cd bench/compare && go build -o compare .`); effective flags: -rounds %d -duration %v -warmup %v -callers %d -systems %s -measure %s\n",
		commandLine(), o.rounds, o.duration, o.warmup, o.callers, strings.Join(keys(sel), ","), measures(o))
	fmt.Fprintf(w, "- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	cpu := cpuModel()
	if cpu != "" {
		cpu = ", " + cpu
	}
	fmt.Fprintf(w, "- Go: %s %s/%s, NumCPU %d, GOMAXPROCS %d%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), cpu)
	fmt.Fprintf(w, "- aegis: this working tree (nested module bench/compare, `replace github.com/aegisipc/aegis => ../..`); grpc-go %s\n", grpcVersion)
	if o.split {
		fmt.Fprintf(w, "- -split: every system's server runs in a child process (this program with -serve <system>), its client in this one, over 127.0.0.1 TCP; allocations count the client side only; each round starts each system afresh and stops it afterwards; the order of systems rotates from round to round\n")
	} else {
		fmt.Fprintf(w, "- every system runs server and client in this process, over 127.0.0.1 TCP; each round starts each system afresh and stops it afterwards; the order of systems rotates from round to round\n")
	}
	fmt.Fprintf(w, "- latency: 1 caller, %d-byte payload, sequential calls for %v after a %v warmup; every call timed\n", latencyPayload, o.duration, o.warmup)
	fmt.Fprintf(w, "- throughput: %d concurrent callers, %d-byte payload, for %v after a %v warmup; every call timed\n", o.callers, throughputPayload, o.duration, o.warmup)
	side := "client and server sides together"
	if o.split {
		side = "the client side only (the server runs in the child)"
	}
	fmt.Fprintf(w, "- allocs/call: runtime.MemStats.Mallocs delta over the measurement ÷ calls, for the whole process: %s (plus any background work, e.g. aegis gossip; the timing loop itself allocates nothing)\n", side)
	fmt.Fprintf(w, "- every figure is the median over %d round(s), taken figure by figure\n", o.rounds)
	fmt.Fprintf(w, "- systems:\n")
	for _, s := range sel {
		fmt.Fprintf(w, "  - %s: %s\n", s.name, s.desc)
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "| System | Latency p50 | Latency p99 | Allocs/call (latency) | Throughput (calls/s) | Throughput p50 | Throughput p99 | Allocs/call (throughput) |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range sel {
		m := sums[s.key]
		lat, tput := "– | – | –", "– | – | – | –"
		if m.hasLat {
			lat = fmt.Sprintf("%s | %s | %.1f", fmtDur(m.latP50), fmtDur(m.latP99), m.latAllocs)
		}
		if m.hasTput {
			tput = fmt.Sprintf("%s | %s | %s | %.1f", fmtRate(m.tput), fmtDur(m.tputP50), fmtDur(m.tputP99), m.tputAllocs)
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", s.name, lat, tput)
	}
	fmt.Fprintln(w)

	if o.rounds > 1 {
		fmt.Fprintf(w, "Spread over the rounds (min – max):\n\n")
		fmt.Fprintf(w, "| System | Latency p50 | Calls per latency run (median) | Throughput (calls/s) | Calls per throughput run (median) |\n")
		fmt.Fprintf(w, "|---|---:|---:|---:|---:|\n")
		for _, s := range sel {
			m := sums[s.key]
			lat, tput := "– | –", "– | –"
			if m.hasLat {
				lat = fmt.Sprintf("%s – %s | %s", fmtDur(m.latP50Min), fmtDur(m.latP50Max), fmtRate(m.latCalls))
			}
			if m.hasTput {
				tput = fmt.Sprintf("%s – %s | %s", fmtRate(m.tputMin), fmtRate(m.tputMax), fmtRate(m.tputCalls))
			}
			fmt.Fprintf(w, "| %s | %s | %s |\n", s.name, lat, tput)
		}
		fmt.Fprintln(w)
	}

	pr := summarizePaired(paired)
	pr.write(w, o, len(paired))

	ts := targets(sums, pr)
	fmt.Fprintf(w, "Targets (aegis Call unless stated):\n\n")
	fmt.Fprintf(w, "| Target | Measured | Result |\n")
	fmt.Fprintf(w, "|---|---|---|\n")
	met, known := 0, 0
	for _, t := range ts {
		if t.known {
			known++
		}
		if t.measured == "" {
			t.measured = "–"
		}
		r := "n/a (not measured)"
		switch {
		case t.known && t.met:
			r = "met"
			met++
		case t.known:
			r = "**NOT met**"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.goal, t.measured, r)
	}
	if known == len(ts) {
		fmt.Fprintf(w, "\n%d of %d targets met.\n", met, len(ts))
	} else {
		fmt.Fprintf(w, "\n%d of %d measured targets met (%d not measured).\n", met, known, len(ts)-known)
	}
}

func targets(s map[string]summary, pr pairedSummary) []target {
	call, haveCall := s["call"]
	var ts []target
	// ratio compares an aegis Call figure with another system's; lat tells
	// which measurement the figures come from.
	ratio := func(goal, other string, lat bool, num, den float64, unit func(float64) string, ok func(r float64) bool) {
		o, have := s[other]
		t := target{goal: goal, known: haveCall && have && measured(call, lat) && measured(o, lat)}
		if t.known && den > 0 {
			r := num / den
			t.measured = fmt.Sprintf("%.2f× (%s vs %s)", r, unit(num), unit(den))
			t.met = ok(r)
		}
		ts = append(ts, t)
	}
	dur := func(v float64) string { return fmtDur(time.Duration(v)) }
	rate := func(v float64) string { return fmtRate(v) + "/s" }

	ratio("Latency p50 ≤ 1.5× raw TCP", "tcp", true, float64(call.latP50), float64(s["tcp"].latP50), dur, func(r float64) bool { return r <= 1.5 })
	ratio("Latency p50 ≤ 0.6× grpc-go", "grpc", true, float64(call.latP50), float64(s["grpc"].latP50), dur, func(r float64) bool { return r <= 0.6 })
	ratio("Latency p50 < net/rpc", "netrpc", true, float64(call.latP50), float64(s["netrpc"].latP50), dur, func(r float64) bool { return r < 1 })

	t := target{goal: "≤ 10 allocs/call (latency run, whole process)", known: haveCall && call.hasLat}
	if haveCall {
		t.measured = fmt.Sprintf("%.2f (process-wide, so background gossip counts too)", call.latAllocs)
		t.met = call.latAllocs <= 10
	}
	ts = append(ts, t)

	ratio("Throughput ≥ 2.5× grpc-go", "grpc", false, call.tput, s["grpc"].tput, rate, func(r float64) bool { return r >= 2.5 })
	ratio("Throughput ≥ 1.2× net/rpc", "netrpc", false, call.tput, s["netrpc"].tput, rate, func(r float64) bool { return r >= 1.2 })
	ratio("Throughput p99 < grpc-go's", "grpc", false, float64(call.tputP99), float64(s["grpc"].tputP99), dur, func(r float64) bool { return r < 1 })
	ts = append(ts, tlsTargets(s)...)

	// CallWithFailover against Call: "within 5%" means no more than 5%
	// slower (a faster CallWithFailover passes). The interleaved figures
	// are used when there are any: separate runs differ by more than 5%
	// from drift alone.
	fo, haveFO := s["failover"]
	nd, haveND := s["nodedup"]
	if pr.rounds > 0 {
		ts = append(ts, pr.targets()...)
		return ts
	}
	t = target{goal: "CallWithFailover latency p50 within 5% of Call (≤ 1.05×), separate runs", known: haveCall && haveFO && call.hasLat && fo.hasLat}
	if t.known && call.latP50 > 0 {
		r := float64(fo.latP50) / float64(call.latP50)
		t.measured = fmt.Sprintf("%.3f× (%s vs %s)", r, fmtDur(fo.latP50), fmtDur(call.latP50))
		t.met = r <= 1.05
	}
	ts = append(ts, t)
	t = target{goal: "CallWithFailover throughput within 5% of Call (≥ 0.95×), separate runs", known: haveCall && haveFO && call.hasTput && fo.hasTput}
	if t.known && call.tput > 0 {
		r := fo.tput / call.tput
		t.measured = fmt.Sprintf("%.3f× (%s vs %s)", r, rate(fo.tput), rate(call.tput))
		t.met = r >= 0.95
	}
	ts = append(ts, t)

	// Dedup bookkeeping: Call against the same setup with dedup off.
	t = target{goal: "Dedup bookkeeping adds < 5% of Call's p50, separate runs", known: haveCall && haveND && call.hasLat && nd.hasLat}
	if t.known && nd.latP50 > 0 {
		d := call.latP50 - nd.latP50
		t.measured = fmt.Sprintf("%s (%.1f%%: %s with dedup vs %s without)", fmtDur(d), 100*float64(d)/float64(call.latP50), fmtDur(call.latP50), fmtDur(nd.latP50))
		t.met = float64(d) < 0.05*float64(call.latP50)
	}
	ts = append(ts, t)
	return ts
}

// measured reports whether m has the latency (lat) or throughput figures.
func measured(m summary, lat bool) bool {
	if lat {
		return m.hasLat
	}
	return m.hasTput
}

func keys(sel []system) []string {
	out := make([]string, len(sel))
	for i, s := range sel {
		out[i] = s.key
	}
	return out
}

func measures(o *options) string {
	var m []string
	if o.latency {
		m = append(m, "latency")
	}
	if o.throughput {
		m = append(m, "throughput")
	}
	return strings.Join(m, ",")
}

// tlsTargets compare aegis Call over TLS (SecretKey) with grpc-go over TLS.
func tlsTargets(s map[string]summary) []target {
	ct, haveCT := s["calltls"]
	gt, haveGT := s["grpctls"]
	lat := target{goal: "TLS: latency p50 ≤ 0.6× grpc-go with TLS", known: haveCT && haveGT && measured(ct, true) && measured(gt, true)}
	if lat.known && gt.latP50 > 0 {
		r := float64(ct.latP50) / float64(gt.latP50)
		lat.measured = fmt.Sprintf("%.2f× (%s vs %s)", r, fmtDur(ct.latP50), fmtDur(gt.latP50))
		lat.met = r <= 0.6
	}
	tput := target{goal: "TLS: throughput ≥ 2.5× grpc-go with TLS", known: haveCT && haveGT && measured(ct, false) && measured(gt, false)}
	if tput.known && gt.tput > 0 {
		r := ct.tput / gt.tput
		tput.measured = fmt.Sprintf("%.2f× (%s/s vs %s/s)", r, fmtRate(ct.tput), fmtRate(gt.tput))
		tput.met = r >= 2.5
	}
	return []target{lat, tput}
}
