package main

import (
	"context"
	"encoding/csv"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

// scale runs, for each cluster size, one cluster on the in-memory network
// through spread, a quiet cost window and a freshness window, then a cold
// start of a second cluster of the same size.

// scaleOpts are the scale subcommand's own flags.
type scaleOpts struct {
	per        int           // instances per node at rest
	spreadRuns int           // spread measurements per size
	coldRuns   int           // cold starts per size
	warm       time.Duration // wait after the spread, before the cost window
	costWin    time.Duration // quiet window: bytes and CPU
	freshWin   time.Duration // freshness window
	every      time.Duration // freshness sampling period
	profPrefix string        // per-phase CPU profiles
	gogc       int           // debug.SetGCPercent
	csv        string        // also write the results here, for aegis-bench model
	joinCPU    float64       // pause joins while the process uses more cores than this
	regRate    float64       // registrations a second before the spread
}

// scaleResult is what one cluster size measured.
type scaleResult struct {
	n        int
	spread   []convergence
	spreadOt []float64 // CPU other processes used during each spread, in cores
	cold     []convergence
	cost     costWindow
	fresh    freshWindow
	setup    time.Duration // start, join, members seen, registration, settle
	joinTime time.Duration // start and join
	members  time.Duration // until every node saw every other alive
	setupCPU time.Duration // process CPU time spent on the setup
	err      error         // the size's run stopped early
}

// costWindow is the quiet window's per-node figures.
type costWindow struct {
	ok                    bool
	secs                  float64
	udpBytes, udpPackets  float64 // per node per second
	tcpBytes, tcpDials    float64
	bytesPerDial          float64 // TCP bytes per stream dialed in the window (0: none)
	cpuMs                 float64
	hbRecv, wants, repair float64
	unknown               float64
	dropped               uint64  // in-memory packets dropped at full receivers (all nodes)
	others                float64 // CPU other processes used meanwhile, in cores
}

// freshWindow is the freshness window's figures.
type freshWindow struct {
	ok                bool
	secs              float64
	samples           uint64
	med, p99, max     time.Duration
	maxGap            time.Duration // largest gap between two LastHeartbeat values of one pair
	badInsts, badEv   int           // instances ever sampled not healthy; pairs that turned unhealthy (events)
	missing           uint64        // samples where a node lacked an instance
	total             int           // instances watched
	passMean, passMax time.Duration
}

func runScale(args []string) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	var opt common
	opt.register(fs)
	var so scaleOpts
	ns := fs.String("n", "50,100,200,500", "comma-separated cluster sizes")
	fs.IntVar(&so.per, "instances", 2, "instances per node at rest: instances-1 registered before the spread, plus the spread's one")
	fs.IntVar(&so.spreadRuns, "spread-runs", 1, "spread measurements per size (all but the last are deregistered again)")
	fs.IntVar(&so.coldRuns, "cold-runs", 1, "cold starts per size (0: none)")
	fs.DurationVar(&so.warm, "warm", 5*time.Second, "wait after the spread (and -loss being set) before the cost window")
	fs.DurationVar(&so.costWin, "cost", 30*time.Second, "quiet window for bytes and CPU per node")
	fs.DurationVar(&so.freshWin, "fresh", 60*time.Second, "freshness window (0: none)")
	fs.DurationVar(&so.every, "every", time.Second, "freshness sampling period")
	fs.StringVar(&so.profPrefix, "phase-cpuprofile", "", "write a CPU profile of each phase to <prefix>-n<N>-<phase>.prof (phases: setup, spread<run>, dereg<run> (between spread runs), cost, fresh, cold<run>), and a heap profile after the cost window to <prefix>-n<N>-heap.prof")
	fs.StringVar(&so.csv, "csv", "", "also write one line of figures per size to this CSV file (aegis-bench model -measured reads it)")
	fs.IntVar(&so.gogc, "gogc", 400, "garbage collector target percentage for this process (debug.SetGCPercent; Go's default is 100): hundreds of nodes in one process allocate fast, and memory is plentiful")
	fs.Float64Var(&so.joinCPU, "pace-cpu", 0.8, "join nodes and register the \"svc\" instances one after another, pausing while this process uses more than this many cores or the machine all its cores less a fifth (memberlist re-gossips every member a joiner learns, so joins cost O(N² log N) cluster-wide, and a process starved by them misses probes and declares live nodes dead); 0: no pauses")
	fs.Float64Var(&so.regRate, "reg-rate", 100, "registrations a second of the \"svc\" instances before the spread (all nodes together; 0: as fast as they go)")
	fs.DurationVar(&watchEvery, "watch", 10*time.Second, "print a progress line about the cluster this often (0: never)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	opt.mem = true // scale always runs on the in-memory network
	debug.SetGCPercent(so.gogc)
	if err := opt.validate(); err != nil {
		return err
	}
	sizes, err := parseInts(*ns)
	if err != nil {
		return err
	}
	for _, n := range sizes {
		if n < 2 {
			return fmt.Errorf("cluster size %d: need at least 2 nodes", n)
		}
	}
	if so.per < 1 || so.spreadRuns < 1 || so.coldRuns < 0 || so.costWin <= 0 || so.freshWin < 0 || so.every <= 0 || so.warm < 0 {
		return fmt.Errorf("need -instances >= 1, -spread-runs >= 1, -cold-runs >= 0, positive -cost and -every, -fresh and -warm >= 0")
	}

	var results []scaleResult
	for _, n := range sizes {
		progress("scale N=%d, %d instances per node", n, so.per)
		r := scaleRun(&opt, &so, n)
		if r.err != nil {
			progress("  N=%d stopped early: %v", n, r.err)
		}
		results = append(results, r)
		time.Sleep(time.Second)
	}

	def := aegis.DefaultConfig()
	header("scale", &opt,
		fmt.Sprintf("sizes %v, %d instances per node at rest; every node runs in this process on the in-memory network; GOGC %d", sizes, so.per, so.gogc),
		fmt.Sprintf("procedure per size: start N nodes, join them one by one, wait until every node sees every node alive; register %d instance(s) of service \"svc\" on every node (one node after another), wait until every node sees all, sleep -settle %v (unlike spread's settle step, no warmup instances are registered and deregistered: a mass deregistration costs O(N² log N) tombstone relays); then spread (%d run(s)): behind a barrier every node registers one instance of service \"spread\" at the same moment (the spread subcommand's measured phase, same code), all but the last run deregistered again", so.per-1, opt.settle, so.spreadRuns),
		fmt.Sprintf("then -warm %v, a quiet cost window of %v (bytes counted as in the cost subcommand: UDP = payload bytes of every gossip packet sent, TCP = gossip stream bytes both ways counted at the dialer; CPU = process user+system time, so it includes the Go runtime and this program, divided by nodes and seconds), then a freshness window of %v sampling every node's Instances() every %v (age = now - LastHeartbeat)", so.warm, so.costWin, so.freshWin, so.every),
		fmt.Sprintf("false verdicts: instances of \"svc\" and \"spread\" ever sampled not healthy, and node×instance pairs with an event turning the instance unhealthy at any time after registration (must both be 0); heartbeats every %v, timeout %v", def.HeartbeatInterval, def.HeartbeatTimeout),
		fmt.Sprintf("cold start (%d run(s) per size): a second cluster, as the coldstart subcommand: node 0 starts, then N-1 nodes start, join node 0 and register one instance each at once", so.coldRuns),
	)
	printScaleTables(results, so.per)
	if so.csv != "" {
		if err := writeScaleCSV(so.csv, results, so.per, opt.loss); err != nil {
			return err
		}
		progress("wrote %s", so.csv)
	}
	return nil
}

// scaleRun measures one cluster size.
func scaleRun(opt *common, so *scaleOpts, n int) (r scaleResult) {
	r.n = n
	ctx := context.Background()
	prof := func(phase string) func() {
		if so.profPrefix == "" {
			return func() {}
		}
		stop, err := startWindowProfile(fmt.Sprintf("%s-n%d-%s.prof", so.profPrefix, n, phase))
		if err != nil {
			progress("  profile %s: %v", phase, err)
			return func() {}
		}
		return stop
	}

	func() {
		c := newCluster(opt, n, true)
		c.logs = newLogCounter()
		c.pace = so.joinCPU
		defer c.shutdown()
		t0, cpu0 := time.Now(), processCPU()
		stopProf := prof("setup")
		if err := c.startPaced(ctx, so.joinCPU); err != nil {
			stopProf()
			r.err = err
			return
		}
		r.joinTime = time.Since(t0)
		defer func() { c.stopWatch() }()
		if err := c.waitMembers(opt.cap); err != nil {
			stopProf()
			r.err = err
			return
		}
		r.members = time.Since(t0)
		c.waitQuiet(so.joinCPU/2, opt.cap)
		if so.per > 1 {
			if err := c.registerPaced(ctx, "svc", so.per-1, so.regRate); err != nil {
				stopProf()
				r.err = err
				return
			}
		} else {
			time.Sleep(opt.settle)
		}
		stopProf()
		r.setup, r.setupCPU = time.Since(t0), processCPU()-cpu0
		progress("  setup took %v and %v of CPU", roundD(r.setup), roundD(r.setupCPU))

		var keys []instKey
		for run := 1; run <= so.spreadRuns; run++ {
			keys = make([]instKey, n)
			for i := range keys {
				keys[i] = instKey{"spread", fmt.Sprintf("r%d-%d", run, i)}
			}
			progress("  spread run %d/%d", run, so.spreadRuns)
			stopProf := prof(fmt.Sprintf("spread%d", run))
			b0, c0, t0 := machineBusy(), processCPU(), time.Now()
			cv := c.spreadOnce(ctx, keys)
			r.spreadOt = append(r.spreadOt, otherCPU(b0, machineBusy(), c0, processCPU(), time.Since(t0).Seconds()))
			stopProf()
			r.spread = append(r.spread, cv)
			if cv.err != nil || !cv.ok {
				progress("  spread NOT converged: %d/%d pairs, err %v", cv.pairs, cv.total, cv.err)
				r.err = fmt.Errorf("spread run %d did not converge", run)
				return
			}
			progress("  spread: 50%% %s ms, 99%% %s ms, 100%% %s ms", fmtPct(cv.p50), fmtPct(cv.p99), fmtPct(cv.p100))
			if run < so.spreadRuns {
				stopProf := prof(fmt.Sprintf("dereg%d", run))
				err := c.deregisterAll(ctx, keys)
				stopProf()
				if err != nil {
					r.err = err
					return
				}
				time.Sleep(opt.settle)
			}
		}

		c.startLoss()
		progress("  warm %v, then cost window %v", so.warm, so.costWin)
		time.Sleep(so.warm)
		stopProf = prof("cost")
		r.cost = c.costWindow(so.costWin)
		stopProf()
		if so.profPrefix != "" {
			writeHeapProfile(fmt.Sprintf("%s-n%d-heap.prof", so.profPrefix, n))
		}
		progress("  cost: UDP %.0f B/s, %.1f packets/s, TCP %.0f B/s, CPU %.3f ms/s per node", r.cost.udpBytes, r.cost.udpPackets, r.cost.tcpBytes, r.cost.cpuMs)

		if so.freshWin > 0 {
			watched := append(c.keysOf("svc", n, so.per-1), keys...)
			progress("  freshness window %v, sampling every %v", so.freshWin, so.every)
			stopProf = prof("fresh")
			r.fresh = c.freshWindow(watched, so.freshWin, so.every)
			stopProf()
			progress("  freshness: age median %s ms, p99 %s ms, max %s ms; not healthy: %d sampled, %d by events",
				ms(r.fresh.med), ms(r.fresh.p99), ms(r.fresh.max), r.fresh.badInsts, r.fresh.badEv)
		}
	}()
	if r.err != nil {
		return r
	}

	for run := 1; run <= so.coldRuns; run++ {
		time.Sleep(time.Second)
		progress("  cold start run %d/%d", run, so.coldRuns)
		stopProf := prof(fmt.Sprintf("cold%d", run))
		cv := coldstartRun(opt, n, run)
		stopProf()
		switch {
		case cv.err != nil:
			progress("  cold start FAILED: %v", cv.err)
		case !cv.ok:
			progress("  cold start NOT converged: %d/%d pairs", cv.pairs, cv.total)
		default:
			progress("  cold start: 50%% %s ms, 99%% %s ms, 100%% %s ms", fmtPct(cv.p50), fmtPct(cv.p99), fmtPct(cv.p100))
		}
		r.cold = append(r.cold, cv)
	}
	return r
}

// keysOf names the instances registerEach registered: i-<node>-<j>.
func (c *cluster) keysOf(svc string, n, per int) []instKey {
	var keys []instKey
	for i := range n {
		for j := range per {
			keys = append(keys, instKey{svc, fmt.Sprintf("i-%d-%d", i, j)})
		}
	}
	return keys
}

// deregisterAll deregisters keys (registered by c.register) and waits until no node
// sees any instance of their service.
func (c *cluster) deregisterAll(ctx context.Context, keys []instKey) error {
	for _, k := range keys {
		v, ok := c.regs.LoadAndDelete(k)
		if !ok {
			return fmt.Errorf("deregister %s/%s: not registered here", k.svc, k.id)
		}
		if err := v.(*aegis.Registration).Deregister(ctx); err != nil {
			return fmt.Errorf("deregister %s/%s: %w", k.svc, k.id, err)
		}
	}
	if ok, got := c.waitCount(keys[0].svc, 0, nil, c.opt.cap); !ok {
		return fmt.Errorf("only %d/%d nodes saw the %q instances deregistered after %v", got, len(c.nodes), keys[0].svc, c.opt.cap)
	}
	return nil
}

// costWindow measures bytes, packets and CPU per node over a quiet window.
func (c *cluster) costWindow(d time.Duration) costWindow {
	n := float64(len(c.nodes))
	a, ha := c.costSnap(), c.health(false)
	time.Sleep(d)
	b, hb := c.costSnap(), c.health(false)
	others := otherCPU(ha.busy, hb.busy, ha.cpu, hb.cpu, hb.at.Sub(ha.at).Seconds())
	secs := b.at.Sub(a.at).Seconds()
	per := func(x uint64) float64 { return float64(x) / secs / n }
	st := statsDelta(a.stats, b.stats)
	return costWindow{
		ok:         true,
		secs:       secs,
		udpBytes:   per(b.udpBytes - a.udpBytes),
		udpPackets: per(b.udpPackets - a.udpPackets),
		tcpBytes:   per(b.tcpBytes - a.tcpBytes),
		tcpDials:   per(b.tcpDials - a.tcpDials),
		bytesPerDial: func() float64 {
			if b.tcpDials == a.tcpDials {
				return 0
			}
			return float64(b.tcpBytes-a.tcpBytes) / float64(b.tcpDials-a.tcpDials)
		}(),
		cpuMs:   float64((b.user+b.sys)-(a.user+a.sys)) / float64(time.Millisecond) / secs / n,
		hbRecv:  per(st.HeartbeatsReceived),
		wants:   per(st.HeartbeatWants),
		repair:  per(st.HeartbeatRepairs),
		unknown: per(st.HeartbeatsUnknown),
		dropped: hb.dropped - ha.dropped,
		others:  others,
	}
}

// freshWindow samples every node's view of keys every period for d.
func (c *cluster) freshWindow(keys []instKey, d, every time.Duration) freshWindow {
	index := make(map[instKey]int, len(keys))
	svcs := map[string]bool{}
	for i, k := range keys {
		index[k] = i
		svcs[k.svc] = true
	}
	last := make([][]time.Time, len(c.nodes))
	for i := range last {
		last[i] = make([]time.Time, len(keys))
	}
	hist := newAgeHist(10 * time.Minute)
	fw := freshWindow{total: len(keys)}
	bad := map[int]bool{}
	passes := 0
	var passTime time.Duration
	tick := time.NewTicker(every)
	defer tick.Stop()
	start := time.Now()
	for time.Since(start) < d {
		<-tick.C
		ps := time.Now()
		for i, nd := range c.nodes {
			seen := 0
			for svc := range svcs {
				insts := nd.Instances(svc)
				now := time.Now()
				for _, in := range insts {
					k, ok := index[instKey{svc, in.ID}]
					if !ok {
						continue
					}
					seen++
					hist.add(now.Sub(in.LastHeartbeat))
					if in.Status != aegis.StatusHealthy {
						bad[k] = true
					}
					if l := last[i][k]; !l.IsZero() && in.LastHeartbeat.After(l) {
						fw.maxGap = max(fw.maxGap, in.LastHeartbeat.Sub(l))
					}
					if in.LastHeartbeat.After(last[i][k]) {
						last[i][k] = in.LastHeartbeat
					}
				}
			}
			fw.missing += uint64(len(keys) - seen)
		}
		pd := time.Since(ps)
		passes++
		passTime += pd
		fw.passMax = max(fw.passMax, pd)
	}
	fw.secs = time.Since(start).Seconds()
	fw.ok = true
	fw.samples = hist.n
	fw.med, fw.p99, fw.max = hist.quantile(0.5), hist.quantile(0.99), hist.max
	fw.badInsts = len(bad)
	if passes > 0 {
		fw.passMean = passTime / time.Duration(passes)
	}
	for _, v := range c.views {
		for _, k := range keys {
			if _, ok := v.bad(k); ok {
				fw.badEv++
			}
		}
	}
	return fw
}

// printScaleTables prints the report's tables.
func printScaleTables(results []scaleResult, per int) {
	fmt.Println("Spread, cold start and freshness (times in ms; spread and cold start: time until every node sees every new instance, from the nodes' event timestamps):")
	fmt.Println()
	var rows [][]string
	for _, r := range results {
		row := []string{strconv.Itoa(r.n), strconv.Itoa(r.n * per)}
		row = append(row, convCells(r.spread)...)
		row = append(row, convCells(r.cold)...)
		if r.fresh.ok {
			row = append(row, ms(r.fresh.med), ms(r.fresh.p99), ms(r.fresh.max),
				fmt.Sprintf("%d / %d", r.fresh.badInsts, r.fresh.badEv))
		} else {
			row = append(row, "—", "—", "—", "—")
		}
		row = append(row, othersCell(r.spreadOt...), resultNote(r))
		rows = append(rows, row)
	}
	table([]string{"N", "instances", "spread 50%", "spread 99%", "spread 100% (max over runs)",
		"cold start 50%", "cold start 99%", "cold start 100% (max over runs)",
		"heartbeat age median", "age p99", "age max", "false verdicts (sampled / events)",
		"other processes' CPU during spread (cores)", "notes"}, rows)

	fmt.Println("Cost per node per second over the quiet window:")
	fmt.Println()
	rows = nil
	for _, r := range results {
		if !r.cost.ok {
			rows = append(rows, []string{strconv.Itoa(r.n), "—", "—", "—", "—", "—", "—", "—", "—", "—", "—", "—"})
			continue
		}
		c := r.cost
		rows = append(rows, []string{strconv.Itoa(r.n),
			fmt.Sprintf("%.0f", c.udpBytes), fmt.Sprintf("%.1f", c.udpBytes/float64(r.n-1)),
			fmt.Sprintf("%.1f", c.udpPackets), fmt.Sprintf("%.0f", c.tcpBytes), perDialCell(c.bytesPerDial),
			fmt.Sprintf("%.3f", c.cpuMs), fmt.Sprintf("%.1f", c.hbRecv),
			fmt.Sprintf("%.2f / %.2f", c.wants, c.repair), fmt.Sprintf("%.2f", c.unknown),
			strconv.FormatUint(c.dropped, 10), othersCell(c.others)})
	}
	table([]string{"N", "UDP B/s", "UDP B/s ÷ (N−1)", "UDP packets/s", "TCP B/s", "TCP bytes per stream dialed (push/pull)", "CPU ms/s",
		"heartbeats received/s", "wants / repairs sent/s", "unknown beats/s", "packets dropped at full receivers (all nodes)", "other processes' CPU (cores)"}, rows)
}

// convCells are the 50%, 99% and max-of-100% cells of convergence runs.
func convCells(cvs []convergence) []string {
	if len(cvs) == 0 {
		return []string{"—", "—", "—"}
	}
	var p50, p99, p100 time.Duration
	for _, cv := range cvs {
		if cv.err != nil || !cv.ok {
			return []string{"—", "—", "not converged"}
		}
		p50, p99, p100 = max(p50, cv.p50), max(p99, cv.p99), max(p100, cv.p100)
	}
	if len(cvs) == 1 {
		return []string{ms(p50), ms(p99), ms(p100)}
	}
	return []string{ms(p50) + " (max)", ms(p99) + " (max)", ms(p100)}
}

func resultNote(r scaleResult) string {
	var notes []string
	if r.err != nil {
		notes = append(notes, "stopped: "+r.err.Error())
	}
	for i, cv := range r.cold {
		if cv.err != nil {
			notes = append(notes, fmt.Sprintf("cold start %d failed: %v", i+1, cv.err))
		} else if !cv.ok {
			notes = append(notes, fmt.Sprintf("cold start %d: %d/%d pairs", i+1, cv.pairs, cv.total))
		}
	}
	if len(notes) == 0 {
		return fmt.Sprintf("setup %v (CPU %v)", roundD(r.setup), roundD(r.setupCPU))
	}
	return strings.Join(notes, "; ")
}

// writeHeapProfile writes a heap profile (after a GC) to path.
func writeHeapProfile(path string) {
	f, err := os.Create(path)
	if err != nil {
		progress("  heap profile: %v", err)
		return
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		progress("  heap profile: %v", err)
	}
}

// waitMembers waits until every node sees every node alive.
func (c *cluster) waitMembers(limit time.Duration) error {
	t0 := time.Now()
	n := len(c.nodes)
	for {
		worst := n
		for _, nd := range c.nodes {
			alive := 0
			for _, m := range nd.Members() {
				if m.State == aegis.MemberAlive {
					alive++
				}
			}
			worst = min(worst, alive)
		}
		if worst == n {
			progress("  every node sees all %d members alive after %v", n, roundD(time.Since(t0)))
			return nil
		}
		if time.Since(t0) > limit {
			return fmt.Errorf("after %v a node sees only %d of %d members alive", limit, worst, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// othersCell formats the CPU other processes used (in cores), the largest
// of several windows; "?" where it could not be read.
func othersCell(v ...float64) string {
	if len(v) == 0 {
		return "—"
	}
	m := v[0]
	for _, x := range v {
		if x < 0 {
			return "?"
		}
		m = max(m, x)
	}
	return fmt.Sprintf("%.2f", m)
}

// startPaced starts every node, then joins nodes 1..n-1 one after another
// as startAll does, but pauses while the process has used more than
// maxCPU cores over the last quarter second, or the machine more than
// all its cores but a fifth (see pacer).
func (c *cluster) startPaced(ctx context.Context, maxCPU float64) error {
	t0 := time.Now()
	for i := range c.nodes {
		if err := c.start(i, nil); err != nil {
			return err
		}
	}
	t1 := time.Now()
	c.stopWatch = c.watch(watchEvery) // every node exists now
	var paused time.Duration
	p := newPacer(maxCPU)
	for i := 1; i < len(c.nodes); i++ {
		paused += p.wait()
		if err := c.join(ctx, i); err != nil {
			return err
		}
	}
	progress("  started %d nodes in %v, joined in %v (paused %v, -pace-cpu %.2f)", len(c.nodes), roundD(t1.Sub(t0)), roundD(time.Since(t1)), roundD(paused), maxCPU)
	return nil
}

// registerPaced registers perNode instances of svc on every node (IDs
// i-<node>-<j>, node after node) at rate registrations a second (0: no
// pause), then waits until every node sees all of them and sleeps -settle.
func (c *cluster) registerPaced(ctx context.Context, svc string, perNode int, rate float64) error {
	n := len(c.nodes)
	t0 := time.Now()
	k := 0
	p := newPacer(c.pace)
	for i := range c.nodes {
		for j := range perNode {
			p.wait()
			if rate > 0 {
				if d := time.Until(t0.Add(time.Duration(float64(k) / rate * float64(time.Second)))); d > 0 {
					time.Sleep(d)
				}
			}
			if _, err := c.register(ctx, i, svc, fmt.Sprintf("i-%d-%d", i, j)); err != nil {
				return err
			}
			k++
		}
	}
	t1 := time.Now()
	if ok, got := c.waitCount(svc, n*perNode, nil, c.opt.cap); !ok {
		return fmt.Errorf("only %d/%d nodes saw all %d %q instances after %v", got, n, n*perNode, svc, c.opt.cap)
	}
	progress("  registered %d %q instances in %v (-reg-rate %.0f/s); all %d nodes saw all of them %v later; settling %v", n*perNode, svc, roundD(t1.Sub(t0)), rate, n, roundD(time.Since(t1)), c.opt.settle)
	time.Sleep(c.opt.settle)
	return nil
}

// pacer holds a loop back while this process uses more than max cores or
// the whole machine (other processes included) more than its cores less a
// fifth of a core, each measured over the last quarter second. max 0
// turns it off.
type pacer struct {
	max        float64
	cpu0, busy time.Duration
	at         time.Time
}

func newPacer(max float64) *pacer {
	return &pacer{max: max, cpu0: processCPU(), busy: machineBusy(), at: time.Now()}
}

// wait returns at once unless the last quarter second was over the
// limits; then it sleeps in quarter seconds until one is not. It returns
// how long it slept.
func (p *pacer) wait() time.Duration {
	var slept time.Duration
	for p.max > 0 {
		el := time.Since(p.at)
		if el < 250*time.Millisecond {
			return slept
		}
		cpu, busy := processCPU(), machineBusy()
		own := (cpu - p.cpu0).Seconds() / el.Seconds()
		all := (busy - p.busy).Seconds() / el.Seconds()
		p.cpu0, p.busy, p.at = cpu, busy, time.Now()
		if own <= p.max && (p.busy < 0 || all <= float64(runtime.NumCPU())-0.2) {
			return slept
		}
		time.Sleep(250 * time.Millisecond)
		slept += 250 * time.Millisecond
	}
	return slept
}

// waitQuiet waits until this process used at most max cores over a
// second (the gossip that joins set off has died down), for at most limit.
func (c *cluster) waitQuiet(max float64, limit time.Duration) {
	if max <= 0 {
		return
	}
	t0 := time.Now()
	for time.Since(t0) < limit {
		c0, w0 := processCPU(), time.Now()
		time.Sleep(time.Second)
		if used := (processCPU() - c0).Seconds() / time.Since(w0).Seconds(); used <= max {
			progress("  quiet (%.2f cores) after %v", used, roundD(time.Since(t0)))
			return
		}
	}
	progress("  still above %.2f cores after %v; going on", max, roundD(time.Since(t0)))
}

// scaleCSVHeader names the columns writeScaleCSV writes; readMeasured
// (model.go) reads them by name.
var scaleCSVHeader = []string{"n", "instances", "interval_s", "loss",
	"spread_p50_ms", "spread_p99_ms", "spread_max_ms", "cold_max_ms",
	"age_med_ms", "age_p99_ms", "age_max_ms", "false_sampled", "false_events",
	"udp_Bps", "udp_pps", "tcp_Bps", "tcp_bytes_per_dial", "cpu_ms_per_s",
	"hb_recv_ps", "wants_ps", "repairs_ps", "others_cores"}

// writeScaleCSV writes one line per measured size (sizes that stopped
// early are left out).
func writeScaleCSV(path string, results []scaleResult, per int, loss float64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write(scaleCSVHeader)
	interval := aegis.DefaultConfig().HeartbeatInterval.Seconds()
	msf := func(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) }
	ff := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	for _, r := range results {
		if r.err != nil || !r.cost.ok {
			continue
		}
		var p50, p99, p100, cold time.Duration = -1, -1, -1, -1
		for _, cv := range r.spread {
			p50, p99, p100 = max(p50, cv.p50), max(p99, cv.p99), max(p100, cv.p100)
		}
		for _, cv := range r.cold {
			if cv.ok && cv.err == nil {
				cold = max(cold, cv.p100)
			}
		}
		c := r.cost
		_ = w.Write([]string{strconv.Itoa(r.n), strconv.Itoa(per), ff(interval, 1), ff(loss, 3),
			msf(p50), msf(p99), msf(p100), msf(cold),
			msf(r.fresh.med), msf(r.fresh.p99), msf(r.fresh.max), strconv.Itoa(r.fresh.badInsts), strconv.Itoa(r.fresh.badEv),
			ff(c.udpBytes, 1), ff(c.udpPackets, 2), ff(c.tcpBytes, 1), ff(c.bytesPerDial, 0), ff(c.cpuMs, 3),
			ff(c.hbRecv, 2), ff(c.wants, 3), ff(c.repair, 3), ff(c.others, 2)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func perDialCell(v float64) string {
	if v <= 0 {
		return "— (none in window)"
	}
	return fmt.Sprintf("%.0f", v)
}
