// This file holds the load subcommand, meant for testing: a node that
// calls a service with CallWithFailover at a fixed rate and prints
// statistics as JSON lines.

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/agentproc"
	"github.com/aegisipc/aegis/internal/runlog"
)

// maxErrorSamples is how many distinct error texts a report quotes.
const maxErrorSamples = 5

// loadOptions are the load subcommand's parsed flags.
type loadOptions struct {
	node           nodeFlags
	service        string
	methods        listFlag
	callsFile      string
	payload        string
	rate           float64
	duration       time.Duration
	timeout        time.Duration
	attemptTimeout time.Duration
	wait           time.Duration
}

func loadFlagSet(o *loadOptions) *flag.FlagSet {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	o.node.register(fs, "127.0.0.1:0")
	fs.StringVar(&o.service, "service", "", "service to call (required)")
	fs.Var(&o.methods, "method", "`METHOD` to call; several, comma-separated or repeated, are called in turn (default "+whoamiMethod+")")
	fs.StringVar(&o.callsFile, "calls-file", "", "for delivery tests: append one JSON line per finished call to `PATH` ({\"message_id\",\"method\",\"instance\",\"run\",\"err\"}, run being a count answer's count)")
	fs.StringVar(&o.payload, "payload", "", "payload of every call")
	fs.Float64Var(&o.rate, "rate", 100, "calls started per second, whatever the answers (open loop)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long to make calls (0: until SIGINT or SIGTERM)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "deadline of each call, retries included")
	fs.DurationVar(&o.attemptTimeout, "attempt-timeout", aegis.DefaultConfig().AttemptTimeout, "bound of one attempt before failing over")
	fs.DurationVar(&o.wait, "wait", 30*time.Second, "how long to wait after joining for a healthy instance of -service")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, `usage: aegis load -service NAME -join SEEDS [flags]

For testing. Runs a node that joins the seeds, waits for a healthy
instance of the service, then calls it with CallWithFailover at a fixed
rate. Each second, and once at the end, it prints one JSON line on stdout:

  {"report":"second"|"total","elapsed_s":..,"calls":..,"errors":..,
   "error_samples":[..],"p50_ms":..,"p99_ms":..,"max_ms":..,"instances":{"ID":calls,..}}

"calls" counts calls that finished in the period, "instances" the answers
per instance ID, read from the "instance" field of a JSON answer (what
method whoami, the default, and the count service return; other answers
count under "?"). Every call's message ID is "<node name>-<number>",
numbered from 0 in the order the calls start. The exit status is 0 even when calls failed; it is
non-zero only when the node could not start, join or find the service.
SIGINT or SIGTERM ends the run early (the total is still printed).

Flags:
`)
		fs.PrintDefaults()
	}
	return fs
}

// parseLoad parses the load subcommand's command line (and -config file).
func parseLoad(args []string, stdout io.Writer) (*loadOptions, error) {
	o := &loadOptions{}
	fs := loadFlagSet(o)
	if err := parseFlags(fs, args, &o.node.config, stdout); err != nil {
		return nil, err
	}
	switch {
	case o.service == "":
		return nil, usagef("-service is required")
	case len(o.node.join) == 0:
		return nil, usagef("-join is required (the seeds of the cluster to load)")
	case o.rate <= 0:
		return nil, usagef("-rate must be positive, got %v", o.rate)
	case o.duration < 0:
		return nil, usagef("-duration must not be negative, got %v", o.duration)
	case o.timeout <= 0:
		return nil, usagef("-timeout must be positive, got %v", o.timeout)
	}
	if len(o.methods) == 0 {
		o.methods = listFlag{whoamiMethod}
	}
	return o, nil
}

// runLoad is the load subcommand.
func runLoad(args []string, stdout, stderr io.Writer) error {
	o, err := parseLoad(args, stdout)
	if err != nil {
		return err
	}
	log, err := o.node.newLogger(stderr)
	if err != nil {
		return err
	}
	cfg, err := o.node.nodeConfig(log, os.Getenv)
	if err != nil {
		return err
	}
	cfg.AttemptTimeout = o.attemptTimeout
	node, err := aegis.New(cfg)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = node.Leave(ctx)
	}()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	if _, err := joinSeeds(ctx, node, o.node.join, o.node.joinTimeout, log); err != nil {
		return err
	}
	if err := waitHealthy(ctx, node, o.service, o.wait); err != nil {
		return err
	}
	var record *runlog.Writer
	if o.callsFile != "" {
		if record, err = runlog.Create(o.callsFile); err != nil {
			return fmt.Errorf("-calls-file: %w", err)
		}
	}
	log.Info("load started", "service", o.service, "method", strings.Join(o.methods, ","), "rate", o.rate, "duration", o.duration,
		"instances", len(node.HealthyInstances(o.service)))
	o.generate(ctx, node, json.NewEncoder(stdout), record)
	if record != nil {
		if err := record.Close(); err != nil {
			return fmt.Errorf("-calls-file: %w", err)
		}
	}
	return nil
}

// waitHealthy waits up to limit for a healthy instance of service.
func waitHealthy(ctx context.Context, node *aegis.Node, service string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for len(node.HealthyInstances(service)) == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("no healthy instance of service %q within -wait %v (services known: %v)", service, limit, node.Services())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted while waiting for service %q", service)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// generate starts calls at o.rate until o.duration passes or ctx ends,
// printing a report each second and writing each finished call to record
// when it is not nil, then waits for the calls in flight and prints the
// total.
func (o *loadOptions) generate(ctx context.Context, node *aegis.Node, out *json.Encoder, record *runlog.Writer) {
	var (
		wg     sync.WaitGroup
		window = &tally{}
		total  = &tally{}
		start  = time.Now()
	)
	finished := func(c runlog.Call, d time.Duration, answer []byte, err error) {
		id := ""
		if err == nil {
			id = answeringInstance(answer)
			c.Instance, c.Run = id, answerCount(answer)
		} else {
			c.Err = err.Error()
		}
		window.add(d, id, err)
		total.add(d, id, err)
		if record != nil {
			_ = record.Write(c) // a failed write is returned by Close
		}
	}
	call := func(n int64) {
		defer wg.Done()
		c := runlog.Call{MessageID: node.Name() + "-" + strconv.FormatInt(n, 10), Method: o.methods[n%int64(len(o.methods))]}
		cctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		defer cancel()
		t0 := time.Now()
		answer, err := node.CallWithFailover(cctx, o.service, c.Method, []byte(o.payload), aegis.WithMessageID(c.MessageID))
		finished(c, time.Since(t0), answer, err)
	}
	pace := time.NewTicker(5 * time.Millisecond)
	defer pace.Stop()
	second := time.NewTicker(time.Second)
	defer second.Stop()
	var started int64
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case now := <-pace.C:
			elapsed := now.Sub(start)
			if o.duration > 0 && elapsed >= o.duration {
				elapsed = o.duration
			}
			for due := int64(elapsed.Seconds() * o.rate); started < due; started++ {
				wg.Add(1)
				go call(started)
			}
			if o.duration > 0 && elapsed >= o.duration {
				break loop
			}
		case <-second.C:
			_ = out.Encode(window.reset().report("second", time.Since(start)))
		}
	}
	wg.Wait()
	_ = out.Encode(total.reset().report("total", time.Since(start)))
}

// answeringInstance returns the "instance" field of a JSON answer, or "?".
func answeringInstance(answer []byte) string {
	var id struct {
		Instance string `json:"instance"`
	}
	if json.Unmarshal(answer, &id) != nil || id.Instance == "" {
		return "?"
	}
	return id.Instance
}

// answerCount returns the "count" field of a JSON answer (the count
// service's run number), or 0.
func answerCount(answer []byte) int64 {
	var a struct {
		Count int64 `json:"count"`
	}
	_ = json.Unmarshal(answer, &a)
	return a.Count
}

// tally accumulates call outcomes. Safe for concurrent use.
type tally struct {
	mu        sync.Mutex // guards the fields below
	latencies []time.Duration
	errors    int
	samples   []string
	instances map[string]int
}

// add records one finished call; instance is "" for a failed call.
func (t *tally) add(d time.Duration, instance string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.latencies = append(t.latencies, d)
	if err != nil {
		t.errors++
		if msg := err.Error(); len(t.samples) < maxErrorSamples && !slices.Contains(t.samples, msg) {
			t.samples = append(t.samples, msg)
		}
		return
	}
	if t.instances == nil {
		t.instances = map[string]int{}
	}
	t.instances[instance]++
}

// reset returns what t held and empties it.
func (t *tally) reset() *tally {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := &tally{latencies: t.latencies, errors: t.errors, samples: t.samples, instances: t.instances}
	t.latencies, t.errors, t.samples, t.instances = nil, 0, nil, nil
	return old
}

// report summarises t, which nobody else uses any more.
func (t *tally) report(kind string, elapsed time.Duration) agentproc.LoadReport {
	slices.Sort(t.latencies)
	inst := t.instances
	if inst == nil {
		inst = map[string]int{}
	}
	return agentproc.LoadReport{
		Report: kind, ElapsedS: round3(elapsed.Seconds()), Calls: len(t.latencies), Errors: t.errors, ErrorSamples: t.samples,
		P50Ms: ms(percentile(t.latencies, 0.50)), P99Ms: ms(percentile(t.latencies, 0.99)), MaxMs: ms(percentile(t.latencies, 1)),
		Instances: inst,
	}
}

// percentile returns the nearest-rank q-quantile (0 < q <= 1) of sorted,
// or 0 when it is empty.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return round3(float64(d) / float64(time.Millisecond)) }

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
