package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"
)

// convergence is how far "every node sees every instance of svc" got,
// measured from t0 with the nodes' own event times.
type convergence struct {
	n, total, pairs int // nodes, node×instance pairs wanted, pairs seen
	nodesDone       int // nodes that saw every instance
	ok              bool
	p50, p99, p100  time.Duration // time to that share of all pairs; -1 if not reached
	last            time.Duration // newest pair seen
	regDone         time.Duration // when the last Register call returned
	err             error         // set when the run could not be carried out
}

// measure collects, for every node and every wanted instance, when the node
// first learned of it, relative to t0.
func (c *cluster) measure(t0 time.Time, keys []instKey) convergence {
	cv := convergence{n: len(c.nodes), total: len(c.nodes) * len(keys), p50: -1, p99: -1, p100: -1}
	var times []time.Duration
	for _, v := range c.views {
		have := 0
		for _, k := range keys {
			if t, ok := v.seen(k); ok {
				times = append(times, max(0, t.Sub(t0)))
				have++
			}
		}
		if have == len(keys) {
			cv.nodesDone++
		}
	}
	slices.Sort(times)
	cv.pairs = len(times)
	cv.ok = cv.pairs == cv.total
	if len(times) > 0 {
		cv.last = times[len(times)-1]
	}
	at := func(p float64) time.Duration {
		need := max(1, int(math.Ceil(p*float64(cv.total))))
		if need > len(times) {
			return -1
		}
		return times[need-1]
	}
	cv.p50, cv.p99, cv.p100 = at(0.5), at(0.99), at(1)
	return cv
}

func fmtPct(d time.Duration) string {
	if d < 0 {
		return "—"
	}
	return ms(d)
}

// convergenceCmd is what spread and coldstart share: flags, runs and report.
type convergenceCmd struct {
	name     string
	target   time.Duration // wanted max of the 100% figure at targetN
	targetN  int
	describe []string
	run      func(opt *common, n, run int) convergence
}

func (cc *convergenceCmd) main(args []string) error {
	fs := flag.NewFlagSet(cc.name, flag.ContinueOnError)
	var opt common
	opt.register(fs)
	ns := fs.String("n", "10,50,100", "comma-separated cluster sizes")
	runs := fs.Int("runs", 5, "runs per cluster size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := opt.validate(); err != nil {
		return err
	}
	sizes, err := parseInts(*ns)
	if err != nil {
		return err
	}
	if *runs < 1 {
		return fmt.Errorf("-runs must be at least 1")
	}
	for _, n := range sizes {
		if n < 2 {
			return fmt.Errorf("cluster size %d: need at least 2 nodes", n)
		}
	}

	results := make(map[int][]convergence)
	for _, n := range sizes {
		for r := 1; r <= *runs; r++ {
			progress("%s N=%d run %d/%d", cc.name, n, r, *runs)
			cv := cc.run(&opt, n, r)
			switch {
			case cv.err != nil:
				progress("  run FAILED: %v", cv.err)
			case cv.ok:
				progress("  converged: 50%% %s ms, 99%% %s ms, 100%% %s ms", fmtPct(cv.p50), fmtPct(cv.p99), fmtPct(cv.p100))
			default:
				progress("  NOT converged within %v: %d/%d pairs, %d/%d nodes complete", opt.cap, cv.pairs, cv.total, cv.nodesDone, cv.n)
			}
			results[n] = append(results[n], cv)
			time.Sleep(300 * time.Millisecond) // let closed sockets drain
		}
	}

	header(cc.name, &opt, append(slices.Clone(cc.describe),
		fmt.Sprintf("sizes %v, %d runs each; times in ms from the start of the measured phase, from the nodes' own event timestamps (aegis.Event.Time)", sizes, *runs))...)

	fmt.Println("Per run (a pair is one node knowing one instance; N nodes × N instances pairs):")
	fmt.Println()
	var rows [][]string
	for _, n := range sizes {
		for r, cv := range results[n] {
			res := "ok"
			switch {
			case cv.err != nil:
				res = "FAILED: " + cv.err.Error()
			case !cv.ok:
				res = fmt.Sprintf("NOT CONVERGED in %v: %d/%d pairs, %d/%d nodes complete, last pair at %s ms", opt.cap, cv.pairs, cv.total, cv.nodesDone, cv.n, ms(cv.last))
			}
			rows = append(rows, []string{strconv.Itoa(n), strconv.Itoa(r + 1),
				fmtPct(cv.p50), fmtPct(cv.p99), fmtPct(cv.p100), ms(cv.regDone),
				fmt.Sprintf("%d/%d", cv.pairs, cv.total), res})
		}
	}
	table([]string{"N", "run", "50% (ms)", "99% (ms)", "100% (ms)", "last Register returned (ms)", "pairs", "result"}, rows)

	fmt.Println("Summary of the 100% figure (time until every node sees every instance) over converged runs:")
	fmt.Println()
	rows = nil
	for _, n := range sizes {
		var d, d99 []time.Duration
		failed := 0
		for _, cv := range results[n] {
			if cv.ok && cv.err == nil {
				d = append(d, cv.p100)
				d99 = append(d99, cv.p99)
			} else {
				failed++
			}
		}
		s, s99 := summarize(d), summarize(d99)
		row := []string{strconv.Itoa(n), fmt.Sprintf("%d/%d", len(d), len(results[n]))}
		if len(d) > 0 {
			row = append(row, ms(s.min), ms(s.med), ms(s.max), ms(s99.med))
		} else {
			row = append(row, "—", "—", "—", "—")
		}
		tgt := "—"
		if n == cc.targetN {
			met := failed == 0 && len(d) > 0 && s.max < cc.target
			tgt = fmt.Sprintf("max < %s ms: %s", ms(cc.target), map[bool]string{true: "MET", false: "NOT MET"}[met])
		}
		row = append(row, tgt)
		rows = append(rows, row)
	}
	table([]string{"N", "converged", "min (ms)", "median (ms)", "max (ms)", "median of 99% (ms)", "target"}, rows)
	return nil
}

func runSpread(args []string) error {
	cc := &convergenceCmd{
		name: "spread", target: time.Second, targetN: 100,
		describe: []string{
			"procedure: start N nodes, join them, settle (each node registers a \"warmup\" instance, wait until all nodes see all N, deregister them all, wait until all nodes see none, then sleep -settle); then release a barrier: every node registers one instance of service \"spread\" (InstanceID i-<k>) at once",
			"measured: from the barrier release until every node has an EventRegistered for every \"spread\" instance (its own included)",
			"target: max of the 100% figure under 1 s at N=100",
		},
		run: spreadRun,
	}
	return cc.main(args)
}

func spreadRun(opt *common, n, run int) convergence {
	ctx := context.Background()
	c := newCluster(opt, n, false)
	defer c.shutdown()
	fail := func(err error) convergence {
		return convergence{n: n, total: n * n, err: err, p50: -1, p99: -1, p100: -1}
	}
	if err := c.startAll(ctx, nil); err != nil {
		return fail(err)
	}
	if err := c.settle(ctx); err != nil {
		return fail(err)
	}

	keys := make([]instKey, n)
	for i := range keys {
		keys[i] = instKey{"spread", fmt.Sprintf("i-%d", i)}
	}
	return c.spreadOnce(ctx, keys)
}

// spreadOnce is the measured phase of spread: behind a barrier, node i
// registers keys[i] (all at the same moment); it waits until every node
// sees every key (or the cap) and measures from the barrier's release.
// The keys must be of one service that no node has instances of yet.
func (c *cluster) spreadOnce(ctx context.Context, keys []instKey) convergence {
	n := len(c.nodes)
	fail := func(err error) convergence {
		return convergence{n: n, total: n * n, err: err, p50: -1, p99: -1, p100: -1}
	}
	release := make(chan struct{})
	var ready, done sync.WaitGroup
	errs := make([]error, n)
	returned := make([]time.Time, n)
	for i := range n {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-release
			_, errs[i] = c.register(ctx, i, keys[i].svc, keys[i].id)
			returned[i] = time.Now()
		}()
	}
	ready.Wait()
	time.Sleep(10 * time.Millisecond) // let every goroutine park on the barrier
	t0 := time.Now()
	close(release)
	done.Wait()
	var regDone time.Duration
	for i := range n {
		if errs[i] != nil {
			return fail(errs[i])
		}
		regDone = max(regDone, returned[i].Sub(t0))
	}
	c.waitCount(keys[0].svc, n, nil, c.opt.cap-time.Since(t0))
	cv := c.measure(t0, keys)
	cv.regDone = regDone
	return cv
}

func runColdstart(args []string) error {
	cc := &convergenceCmd{
		name: "coldstart", target: 3 * time.Second, targetN: 100,
		describe: []string{
			"procedure: start node 0 (alone); then, at t0, node 0 registers its instance and N-1 goroutines each start a node (aegis.New), join node 0 and at once register one instance of service \"cold\" (InstanceID i-<k>); -seeds is ignored (earlier nodes do not exist yet)",
			"measured: from t0 (includes node start-up and joins) until every node has an EventRegistered for every \"cold\" instance",
			"target: max of the 100% figure under 3 s at N=100",
		},
		run: coldstartRun,
	}
	return cc.main(args)
}

func coldstartRun(opt *common, n, run int) convergence {
	ctx := context.Background()
	c := newCluster(opt, n, false)
	defer c.shutdown()
	fail := func(err error) convergence {
		return convergence{n: n, total: n * n, err: err, p50: -1, p99: -1, p100: -1}
	}
	if err := c.start(0, nil); err != nil {
		return fail(err)
	}
	keys := make([]instKey, n)
	for i := range keys {
		keys[i] = instKey{"cold", fmt.Sprintf("i-%d", i)}
	}
	seed := c.nodes[0].Addr()
	errs := make([]error, n)
	returned := make([]time.Time, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { returned[i] = time.Now() }()
			if i > 0 {
				if errs[i] = c.start(i, nil); errs[i] != nil {
					return
				}
				jctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				_, err := c.nodes[i].Join(jctx, seed)
				cancel()
				if err != nil {
					errs[i] = fmt.Errorf("node %d: %w", i, err)
					return
				}
			}
			_, errs[i] = c.register(ctx, i, keys[i].svc, keys[i].id)
		}()
	}
	wg.Wait()
	var regDone time.Duration
	for i := range n {
		if errs[i] != nil {
			return fail(errs[i])
		}
		regDone = max(regDone, returned[i].Sub(t0))
	}
	c.waitCount("cold", n, nil, opt.cap-time.Since(t0))
	cv := c.measure(t0, keys)
	cv.regDone = regDone
	return cv
}
