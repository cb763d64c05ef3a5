// Command compare measures aegis direct calls against raw TCP, net/rpc and
// grpc-go on loopback, every system running server and client inside this
// one process, and prints a Markdown report with the targets aegis is held
// to.
//
// For every round it starts each system afresh (in an order that rotates
// from round to round, to spread drift), measures
//
//   - latency: one caller, 64-byte payload, sequential calls for -duration
//     after -warmup: p50, p99, and process-wide allocations per call;
//   - throughput: -callers goroutines, 1 KiB payload, for -duration after
//     -warmup: calls/s, p50, p99;
//
// and stops it again. The report gives, for each figure, the median over
// the rounds.
//
// It is a nested module so that grpc-go stays out of the library's go.mod:
//
//	cd bench/compare && go build -o compare . && ./compare
//
// Use -systems call,failover -cpuprofile cpu.out to profile aegis alone, and
// -measure latency or -measure throughput to profile one load shape.
//
// After the systems, each round also measures aegis Call, CallWithFailover
// and Call with dedup off interleaved, taking turns every 64 calls or 50 ms
// (see paired.go): their differences are a few percent, less than what
// drifts between two separate runs. Turn it off with -paired=false. With
// -otel it also measures Call from nodes whose providers are the
// OpenTelemetry SDK (metrics; metrics and traces), to report what
// instrumentation costs.
//
// With -split every system's server runs in a child process (this program
// with -serve <system>), as it would in a deployment: the client and the
// server then do not share the process's scheduler, and allocations count
// the client side only.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"
)

const (
	latencyPayload    = 64
	throughputPayload = 1024
)

var logw io.Writer = os.Stderr

type options struct {
	rounds     int
	duration   time.Duration
	warmup     time.Duration
	callers    int
	systems    string
	latency    bool // run the latency measurement
	throughput bool // run the throughput measurement
	cpuprofile string
	memprofile string
	paired     bool   // run the interleaved measurement of aegis variants
	otel       bool   // add the OpenTelemetry SDK variants to it
	split      bool   // servers in child processes
	serve      string // child mode: serve this system until stdin closes
}

func main() {
	var o options
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; each figure reported is the median over the rounds")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each latency and each throughput measurement")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "warmup before each measurement (not measured)")
	flag.IntVar(&o.callers, "callers", 64, "concurrent caller goroutines in the throughput measurement")
	flag.StringVar(&o.systems, "systems", "tcp,netrpc,grpc,call,nodedup,failover", "comma-separated systems to run: tcp, netrpc, grpc, grpctls, call, nodedup, failover, calltls")
	measure := flag.String("measure", "latency,throughput", "comma-separated measurements to run: latency, throughput (targets needing a skipped one show n/a)")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.StringVar(&o.memprofile, "memprofile", "", "write an allocation profile (every allocation sampled) to this file at the end")
	flag.BoolVar(&o.paired, "paired", true, "also measure Call, CallWithFailover and Call with dedup off interleaved, taking turns (targets on their ratios use it; not with -split)")
	flag.BoolVar(&o.otel, "otel", false, "add Call with the OpenTelemetry SDK (metrics; metrics and traces with an exporter) to the interleaved measurement, to report its overhead (its backlog slows the variant after it: leave it off for the targets)")
	flag.BoolVar(&o.split, "split", false, "run each system's server in a child process instead of this one")
	flag.StringVar(&o.serve, "serve", "", "internal (used by -split): serve this system, print its address, stop when stdin closes")
	flag.Parse()
	if o.serve != "" {
		if err := serveChild(o.serve); err != nil {
			fmt.Fprintln(os.Stderr, "compare -serve:", err)
			os.Exit(1)
		}
		return
	}
	for _, m := range strings.Split(*measure, ",") {
		switch strings.TrimSpace(m) {
		case "latency":
			o.latency = true
		case "throughput":
			o.throughput = true
		default:
			fmt.Fprintf(os.Stderr, "compare: -measure: unknown measurement %q\n", m)
			os.Exit(2)
		}
	}
	if err := run(&o); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

// figures is what one round measured for one system.
type figures struct {
	lat, tput       result
	hasLat, hasTput bool
}

func run(o *options) error {
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", flag.Args())
	}
	if o.rounds < 1 || o.callers < 1 || o.duration <= 0 || o.warmup < 0 {
		return fmt.Errorf("-rounds and -callers must be at least 1, -duration positive, -warmup not negative")
	}
	var sel []system
	for _, k := range strings.Split(o.systems, ",") {
		k = strings.TrimSpace(k)
		i := slices.IndexFunc(systems, func(s system) bool { return s.key == k })
		if i < 0 {
			return fmt.Errorf("-systems: unknown system %q", k)
		}
		if slices.ContainsFunc(sel, func(s system) bool { return s.key == k }) {
			return fmt.Errorf("-systems: %q given twice", k)
		}
		sel = append(sel, systems[i])
	}

	if o.memprofile != "" {
		runtime.MemProfileRate = 1
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}

	began := time.Now()
	res := map[string][]figures{}
	var paired []pairedFigures
	for r := 0; r < o.rounds; r++ {
		order := make([]system, 0, len(sel))
		for i := range sel {
			order = append(order, sel[(i+r)%len(sel)])
		}
		names := make([]string, len(order))
		for i, s := range order {
			names[i] = s.key
		}
		fmt.Fprintf(logw, "round %d/%d: %s\n", r+1, o.rounds, strings.Join(names, " → "))
		for _, s := range order {
			f, err := runSystem(s, o)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, s.name, err)
			}
			line := fmt.Sprintf("  %-24s", s.name)
			if f.hasLat {
				line += fmt.Sprintf(" latency p50 %9s p99 %9s %5.1f allocs/call (%d calls)",
					fmtDur(f.lat.p50), fmtDur(f.lat.p99), f.lat.allocs, f.lat.calls)
			}
			if f.hasTput {
				line += fmt.Sprintf(" | throughput %7.0f calls/s p50 %9s p99 %9s %5.1f allocs/call",
					f.tput.perSecond, fmtDur(f.tput.p50), fmtDur(f.tput.p99), f.tput.allocs)
			}
			fmt.Fprintln(logw, line)
			res[s.key] = append(res[s.key], f)
		}
		if o.paired && !o.split {
			pf, err := runPaired(o)
			if err != nil {
				return fmt.Errorf("round %d, paired: %w", r+1, err)
			}
			fmt.Fprintf(logw, "  %-24s%s\n", "paired (interleaved)", pf.line())
			paired = append(paired, pf)
		}
	}
	fmt.Fprintf(logw, "done in %v\n\n", time.Since(began).Round(time.Second))

	if o.memprofile != "" {
		f, err := os.Create(o.memprofile)
		if err != nil {
			return err
		}
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			return err
		}
		_ = f.Close()
	}
	report(os.Stdout, o, sel, res, paired)
	return nil
}

// runSystem starts s, measures latency and throughput, and stops it.
func runSystem(s system, o *options) (figures, error) {
	var f figures
	start := s.start
	if o.split {
		start = func() (*running, error) { return startSplit(s) }
	}
	r, err := start()
	if err != nil {
		return f, fmt.Errorf("start: %w", err)
	}
	defer func() {
		r.close()
		runtime.GC()
	}()
	if o.latency {
		if f.lat, err = measureLatency(r, latencyPayload, o.warmup, o.duration); err != nil {
			return f, fmt.Errorf("latency: %w", err)
		}
		f.hasLat = true
	}
	if o.throughput {
		if f.tput, err = measureThroughput(r, o.callers, throughputPayload, o.warmup, o.duration); err != nil {
			return f, fmt.Errorf("throughput: %w", err)
		}
		f.hasTput = true
	}
	return f, nil
}

// serveChild runs the server of system key, prints its address on stdout
// and stops it when stdin reaches its end (the parent closed it or died).
func serveChild(key string) error {
	i := slices.IndexFunc(systems, func(s system) bool { return s.key == key })
	if i < 0 {
		return fmt.Errorf("unknown system %q", key)
	}
	addr, stop, err := systems[i].serve()
	if err != nil {
		return err
	}
	defer stop()
	fmt.Println(addr)
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// startSplit starts s's server in a child process and its client here.
func startSplit(s system) (*running, error) {
	cmd := exec.Command(os.Args[0], "-serve", s.key)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stopChild := func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		stopChild()
		return nil, fmt.Errorf("server child: %w", err)
	}
	r, err := s.connect(strings.TrimSpace(line))
	if err != nil {
		stopChild()
		return nil, err
	}
	closeClient := r.close
	r.close = func() {
		closeClient()
		stopChild()
	}
	return r, nil
}
