package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis"
)

// promotionOpts are the flags of the promotion subcommand.
type promotionOpts struct {
	common
	runs        int
	modes       []aegis.PromotionMode
	leases      []time.Duration
	hbInterval  time.Duration
	hbTimeout   time.Duration
	healthCheck time.Duration
	attempt     time.Duration
	callers     int
	atOnce      bool
	crash       string // "shutdown" or "blackhole"
}

// tweak applies the heartbeat, lease and attempt settings to a node.
func (o *promotionOpts) tweak(lease time.Duration) func(*aegis.Config) {
	return func(cfg *aegis.Config) {
		cfg.HeartbeatInterval = o.hbInterval
		cfg.HeartbeatTimeout = o.hbTimeout
		cfg.HealthCheckInterval = o.healthCheck
		cfg.RoleLeaseTimeout = lease
		cfg.AttemptTimeout = o.attempt
	}
}

// promotionResult is one run: a fresh cluster, one crash.
type promotionResult struct {
	mode  aegis.PromotionMode
	lease time.Duration
	// From just before the old active's node's Shutdown() to: its instance
	// unhealthy on the new active's node (event time; negative when it was
	// already unhealthy there at the crash, detectOK false when never);
	// the new active's OnRoleChange; the first call the client got
	// answered by the new active. -1 when not reached.
	detect, promoted, answered time.Duration
	detectOK                   bool
	detectReason               string
	suspicions                 int    // ledger-1 turned unhealthy on node 2 or 3 before the crash
	newActive                  string // "ledger-2@2"
	calls, callErrs            int
	firstErr                   error
	longest                    time.Duration // the longest call of the run
	overlap                    string        // two actives answered at once: how
	early                      int           // OnRoleChange calls before the crash
	err                        error
}

func runPromotion(args []string) error {
	fs := flag.NewFlagSet("promotion", flag.ContinueOnError)
	var o promotionOpts
	o.register(fs)
	// This subcommand's own defaults: the shortened profile of the tests
	// and examples, and a short settle (each run is a fresh 4-node cluster).
	o.gossip, o.settle = "local", 500*time.Millisecond
	fs.Lookup("gossip").DefValue, fs.Lookup("settle").DefValue = "local", "500ms"
	fs.IntVar(&o.runs, "runs", 20, "runs per mode and lease (each a fresh cluster)")
	modes := fs.String("modes", "majority,always", "comma-separated promotion modes: majority (PromoteWithMajority), always (PromoteAlways)")
	leases := fs.String("lease", "400ms", "comma-separated Config.RoleLeaseTimeout values to measure")
	fs.DurationVar(&o.hbInterval, "hb-interval", 100*time.Millisecond, "Config.HeartbeatInterval")
	fs.DurationVar(&o.hbTimeout, "hb-timeout", 500*time.Millisecond, "Config.HeartbeatTimeout")
	fs.DurationVar(&o.healthCheck, "health-check", 50*time.Millisecond, "Config.HealthCheckInterval")
	fs.DurationVar(&o.attempt, "attempt-timeout", time.Second, "Config.AttemptTimeout")
	fs.IntVar(&o.callers, "callers", 2, "concurrent CallWithFailover loops on the client node")
	fs.StringVar(&o.crash, "crash", "shutdown", "how the active's node fails: shutdown (Shutdown(), no Leave: its sockets close, peers' dials are refused) or blackhole (needs -mem: the node is cut off from every other node by a partition and keeps running, as a host that lost power or network would look; dials to it hang until their timeout)")
	fs.BoolVar(&o.atOnce, "register-at-once", false, "register the standbys right after the active, without waiting until their nodes see it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := o.validate(); err != nil {
		return err
	}
	if o.runs < 1 || o.callers < 1 {
		return fmt.Errorf("-runs and -callers must be at least 1")
	}
	if o.crash != "shutdown" && (o.crash != "blackhole" || !o.mem) {
		return fmt.Errorf("-crash must be shutdown, or blackhole with -mem")
	}
	var err error
	if o.modes, err = parseModes(*modes); err != nil {
		return err
	}
	if o.leases, err = parseDurations(*leases); err != nil {
		return err
	}

	var results []promotionResult
	for _, lease := range o.leases {
		for _, mode := range o.modes {
			for r := 1; r <= o.runs; r++ {
				progress("promotion lease=%v mode=%s run %d/%d", lease, mode, r, o.runs)
				pr := promotionRun(&o, mode, lease)
				if pr.err != nil {
					progress("  run FAILED: %v", pr.err)
				} else {
					progress("  detected %s ms (%s), promoted %s ms, first answer by %s %s ms; %d calls, %d errors",
						fmtDetect(pr), pr.detectReason, fmtPct(pr.promoted), pr.newActive, fmtPct(pr.answered), pr.calls, pr.callErrs)
				}
				results = append(results, pr)
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	printPromotion(&o, results)
	return nil
}

func parseModes(s string) ([]aegis.PromotionMode, error) {
	var out []aegis.PromotionMode
	for _, f := range strings.Split(s, ",") {
		switch strings.TrimSpace(f) {
		case "majority":
			out = append(out, aegis.PromoteWithMajority)
		case "always":
			out = append(out, aegis.PromoteAlways)
		case "":
		default:
			return nil, fmt.Errorf("unknown promotion mode %q (majority or always)", f)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no promotion modes in %q", s)
	}
	return out, nil
}

func parseDurations(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		d, err := time.ParseDuration(f)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("bad duration %q", f)
		}
		out = append(out, d)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no durations in %q", s)
	}
	return out, nil
}

// runRecorder logs every handler run of the group in the order runs start
// (all nodes share this process), to check that no run carried an older
// epoch than an earlier one and that no epoch had two instances.
type runRecorder struct {
	mu    sync.Mutex
	high  uint64
	owner map[uint64]string
	bad   string
}

func (rr *runRecorder) handler(id string) aegis.Handler {
	return func(ctx context.Context, req *aegis.Request) ([]byte, error) {
		rr.mu.Lock()
		switch o, ok := rr.owner[req.Epoch]; {
		case rr.bad != "":
		case req.Epoch < rr.high:
			rr.bad = fmt.Sprintf("%s ran with epoch %d after a run with epoch %d", id, req.Epoch, rr.high)
		case ok && o != id:
			rr.bad = fmt.Sprintf("%s and %s both ran with epoch %d", o, id, req.Epoch)
		}
		rr.high = max(rr.high, req.Epoch)
		rr.owner[req.Epoch] = id
		rr.mu.Unlock()
		return fmt.Appendf(nil, "%s@%d", id, req.Epoch), nil
	}
}

// roleSettled reports whether nd sees "ledger-1" active with epoch 1 and
// two healthy standbys.
func roleSettled(nd *aegis.Node) bool {
	v := nd.Roles("ledger")
	return len(v) == 1 && v[0].Active != nil && v[0].Active.ID == "ledger-1" && v[0].Epoch == 1 &&
		len(v[0].Standbys) == 2 && v[0].Standbys[1].Status == aegis.StatusHealthy
}

// seesActive reports whether nd sees an active in the "ledger" group.
func seesActive(nd *aegis.Node) bool {
	v := nd.Roles("ledger")
	return len(v) == 1 && v[0].Active != nil
}

// promotionRun starts node 0 (the client) and nodes 1-3, registers
// "ledger-1" active on node 1 and standbys "ledger-2" (priority 2, promoted
// first) and "ledger-3" (priority 1), runs the client's callers, crashes
// node 1 and measures.
func promotionRun(o *promotionOpts, mode aegis.PromotionMode, lease time.Duration) promotionResult {
	ctx := context.Background()
	pr := promotionResult{mode: mode, lease: lease, promoted: -1, answered: -1}
	c := newCluster(&o.common, 4, false)
	defer c.shutdown()
	if err := c.startAll(ctx, o.tweak(lease)); err != nil {
		pr.err = err
		return pr
	}
	trail := &statusTrail{marks: map[int][]statusMark{}}
	for _, i := range []int{2, 3} {
		c.nodes[i].Subscribe(func(ev aegis.Event) { // Shutdown cancels it
			if ev.Type == aegis.EventStatusChanged && ev.Instance.Service == "ledger" && ev.Instance.ID == "ledger-1" {
				trail.add(i, ev)
			}
		})
	}
	rr := &runRecorder{owner: map[uint64]string{}}
	var promotedAt sync.Map // instance ID -> time.Time of its OnRoleChange to active
	var crashed atomic.Bool
	var early atomic.Int64 // role changes before the crash
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("ledger-%d", i)
		svc := aegis.Service{Name: "ledger", InstanceID: id, Handler: rr.handler(id),
			Role: aegis.RoleStandby, Priority: 4 - i, Promotion: mode}
		if i == 1 {
			svc.Role = aegis.RoleActive
		}
		reg, err := c.nodes[i].Register(ctx, svc)
		if err != nil {
			pr.err = fmt.Errorf("node %d: register %s: %w", i, id, err)
			return pr
		}
		reg.OnRoleChange(func(ch aegis.RoleChange) {
			if !crashed.Load() {
				early.Add(1)
				progress("  before the crash: %s now %s, epoch %d (%s)", id, ch.Role, ch.Epoch, ch.Reason)
			} else if ch.Role == aegis.RoleActive {
				promotedAt.LoadOrStore(id, time.Now())
			}
		})
		if i == 1 && !o.atOnce {
			// A standby whose node has not learned of the active yet stands
			// for promotion in a group of one (see the report's notes).
			if err := waitUntil(o.cap, func() bool {
				return seesActive(c.nodes[2]) && seesActive(c.nodes[3])
			}); err != nil {
				pr.err = fmt.Errorf("nodes 2 and 3 did not see the active: %w", err)
				return pr
			}
		}
	}
	registered := time.Now()
	if err := waitUntil(o.cap, func() bool {
		return roleSettled(c.nodes[0]) && roleSettled(c.nodes[1]) && roleSettled(c.nodes[2]) && roleSettled(c.nodes[3])
	}); err != nil {
		pr.err = fmt.Errorf("the group did not settle (ledger-1 active with epoch 1, two healthy standbys on every node): %w", err)
		return pr
	}
	time.Sleep(o.settle)
	// A standby stands for promotion once it has been registered for
	// RoleLeaseTimeout: crash no sooner, so that rule does not delay the
	// promotion measured here.
	if d := time.Until(registered.Add(lease * 3 / 2)); d > 0 {
		time.Sleep(d)
	}

	var mu sync.Mutex
	var firstNew time.Time
	var calls, callErrs atomic.Int64
	var longest atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	callCtx := max(30*time.Second, 4*(o.hbTimeout+lease))
	for range o.callers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(ctx, callCtx)
				out, err := c.nodes[0].CallWithFailover(cctx, "ledger", "append", nil)
				cancel()
				now := time.Now()
				calls.Add(1)
				for d := int64(now.Sub(t0)); ; {
					cur := longest.Load()
					if d <= cur || longest.CompareAndSwap(cur, d) {
						break
					}
				}
				if err != nil {
					callErrs.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else if s := string(out); !strings.HasPrefix(s, "ledger-1@") {
					mu.Lock()
					if firstNew.IsZero() {
						firstNew, pr.newActive = now, s
					}
					mu.Unlock()
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	time.Sleep(300 * time.Millisecond) // calls flow before the crash

	pr.early = int(early.Load())
	crashed.Store(true)
	crash := time.Now()
	if o.crash == "blackhole" {
		others := []string{c.nodes[0].Addr(), c.nodes[2].Addr(), c.nodes[3].Addr()}
		c.nw.Partition([]string{c.nodes[1].Addr()}, others)
	} else {
		_ = c.nodes[1].Shutdown()
	}
	for deadline := crash.Add(o.cap); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		got := !firstNew.IsZero()
		mu.Unlock()
		if got || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(200 * time.Millisecond) // calls keep flowing to the new active
	close(stop)
	wg.Wait()

	pr.calls, pr.callErrs, pr.longest = int(calls.Load()), int(callErrs.Load()), time.Duration(longest.Load())
	if e, ok := firstErr.Load().(error); ok {
		pr.firstErr = e
	}
	rr.mu.Lock()
	pr.overlap = rr.bad
	rr.mu.Unlock()
	if firstNew.IsZero() {
		pr.err = fmt.Errorf("no call was answered by a new active within %v of the crash", o.cap)
		return pr
	}
	pr.answered = firstNew.Sub(crash)
	newID, _, _ := strings.Cut(pr.newActive, "@")
	if at, ok := promotedAt.Load(newID); ok {
		pr.promoted = at.(time.Time).Sub(crash)
	}
	idx, _ := strconv.Atoi(strings.TrimPrefix(newID, "ledger-"))
	pr.detect, pr.detectReason, pr.detectOK = trail.detection(idx, crash)
	pr.suspicions = trail.before(crash)
	return pr
}

// printPromotion prints the report: settings, every run, then the summary
// per lease and mode.
func printPromotion(o *promotionOpts, results []promotionResult) {
	w := os.Stdout
	fmt.Fprintf(w, "## aegis-bench promotion\n\nSettings:\n\n")
	fmt.Fprintf(w, "- command: `%s`\n", commandLine())
	fmt.Fprintf(w, "- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "- library: %s\n", libraryVersion())
	fmt.Fprintf(w, "- runtime: %s %s/%s, %d CPUs, GOMAXPROCS %d\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Fprintf(w, "- all nodes in one process; network: %s\n", o.networkName())
	fmt.Fprintf(w, "- gossip: %s: %s\n", o.gossipName(), gossipString(o.gossipConfig()))
	fmt.Fprintf(w, "- heartbeats: every %v, unhealthy after %v without one, checked every %v; AttemptTimeout %v\n",
		o.hbInterval, o.hbTimeout, o.healthCheck, o.attempt)
	var ls []string
	for _, l := range o.leases {
		ls = append(ls, fmt.Sprintf("%v (majority margin 1.5 × = %v)", l, l*3/2))
	}
	fmt.Fprintf(w, "- RoleLeaseTimeout: %s\n", strings.Join(ls, "; "))
	fmt.Fprintf(w, "- procedure: per run a fresh cluster of 4 nodes (node 0 the client, nodes 1-3 servers; %s); \"ledger-1\" registered RoleActive on node 1, \"ledger-2\" (priority 2) and \"ledger-3\" (priority 1) RoleStandby on nodes 2 and 3 (%s), all with the run's PromotionMode; wait until every node sees ledger-1 active and both standbys healthy, sleep -settle (%v) and until 1.5 × RoleLeaseTimeout after the standbys registered (a standby stands for promotion once registered for RoleLeaseTimeout); %d callers on node 0 call CallWithFailover in a loop (1 ms pause, deadline per call max(30s, 4 × (HeartbeatTimeout + RoleLeaseTimeout))); after 300 ms, %s; stop 200 ms after the first answer from the new active\n",
		o.joinName(), registerOrder(o.atOnce), o.settle, o.callers, crashName(o.crash))
	fmt.Fprintf(w, "- measured from just before the crash: detection = the new active's node marks ledger-1 unhealthy (event time, reason listed; negative when a false suspicion before the crash was still standing at it); promoted = the new active's OnRoleChange to RoleActive; first answer = a caller on node 0 gets an answer from the new active. Caller errors are calls CallWithFailover returned an error for; \"overlap\" counts runs where a handler ran with an older epoch after one with a newer epoch, or two instances ran with one epoch; role changes before the crash are OnRoleChange calls during set-up (there should be none)\n")
	fmt.Fprintf(w, "- %d runs per lease and mode; times in ms\n\n", o.runs)

	var rows [][]string
	for i, pr := range results {
		res := "ok"
		switch {
		case pr.err != nil:
			res = "FAILED: " + pr.err.Error()
		case pr.overlap != "":
			res = "OVERLAP: " + pr.overlap
		case pr.callErrs > 0:
			res = fmt.Sprintf("caller errors, first: %v", pr.firstErr)
		}
		if pr.suspicions > 0 {
			res += fmt.Sprintf("; ledger-1 falsely unhealthy %d× on nodes 2-3 before the crash", pr.suspicions)
		}
		if pr.early > 0 {
			res += fmt.Sprintf("; %d role changes before the crash", pr.early)
		}
		rows = append(rows, []string{pr.lease.String(), pr.mode.String(), strconv.Itoa(i%o.runs + 1),
			fmtDetect(pr), pr.detectReason, fmtPct(pr.promoted), fmtPct(pr.answered), fmtGap(pr),
			pr.newActive, strconv.Itoa(pr.calls), strconv.Itoa(pr.callErrs), ms(pr.longest), res})
	}
	table([]string{"lease", "mode", "run", "detection (ms)", "reason", "promoted (ms)", "first answer (ms)", "answer − detection (ms)",
		"new active", "calls", "caller errors", "longest call (ms)", "result"}, rows)

	fmt.Fprintln(w, "Summary (min / median / max over complete runs; detection and answer − detection over the runs where the new active's node saw ledger-1 healthy at the crash):")
	fmt.Fprintln(w)
	rows = nil
	for _, lease := range o.leases {
		for _, mode := range o.modes {
			var det, prom, ans, gap []time.Duration
			n, errs, calls, overlaps, early := 0, 0, 0, 0, 0
			for _, pr := range results {
				if pr.lease != lease || pr.mode != mode {
					continue
				}
				n++
				errs += pr.callErrs
				calls += pr.calls
				if pr.overlap != "" {
					overlaps++
				}
				early += pr.early
				if pr.err != nil || pr.promoted < 0 {
					continue
				}
				prom, ans = append(prom, pr.promoted), append(ans, pr.answered)
				if pr.detectOK && pr.detect >= 0 {
					det, gap = append(det, pr.detect), append(gap, pr.answered-pr.detect)
				}
			}
			rows = append(rows, []string{lease.String(), mode.String(), fmt.Sprintf("%d/%d (%d)", len(ans), n, len(det)),
				statString(det), statString(prom), statString(ans), statString(gap),
				strconv.Itoa(calls), strconv.Itoa(errs), strconv.Itoa(overlaps), strconv.Itoa(early)})
		}
	}
	table([]string{"lease", "mode", "complete runs (with detection after the crash)", "detection (ms)", "promoted (ms)", "first answer (ms)", "answer − detection (ms)",
		"calls", "caller errors", "overlap", "role changes before the crash"}, rows)
}

func statString(d []time.Duration) string {
	if len(d) == 0 {
		return "—"
	}
	s := summarize(d)
	return fmt.Sprintf("%s / %s / %s", ms(s.min), ms(s.med), ms(s.max))
}

// fmtGap formats answered − detect in ms, or "—" when either is missing.
func fmtGap(pr promotionResult) string {
	if pr.answered < 0 || !pr.detectOK {
		return "—"
	}
	return ms(pr.answered - pr.detect)
}

func fmtDetect(pr promotionResult) string {
	if !pr.detectOK {
		return "—"
	}
	return ms(pr.detect)
}

// statusMark is one status change of ledger-1 on a node.
type statusMark struct {
	at     time.Time
	st     aegis.Status
	reason string
}

// statusTrail records ledger-1's status changes on nodes 2 and 3.
type statusTrail struct {
	mu    sync.Mutex
	marks map[int][]statusMark // by node index
}

func (t *statusTrail) add(i int, ev aegis.Event) {
	t.mu.Lock()
	t.marks[i] = append(t.marks[i], statusMark{ev.Time, ev.NewStatus, ev.Reason})
	t.mu.Unlock()
}

// detection returns when node i saw ledger-1 unhealthy relative to the
// crash: the change standing at the crash if ledger-1 was unhealthy then
// (negative), else the first change to unhealthy after it.
func (t *statusTrail) detection(i int, crash time.Time) (time.Duration, string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var standing *statusMark
	for k := range t.marks[i] {
		m := &t.marks[i][k]
		if m.at.Before(crash) {
			standing = m
			continue
		}
		if standing != nil && standing.st == aegis.StatusUnhealthy {
			break
		}
		if m.st == aegis.StatusUnhealthy {
			return m.at.Sub(crash), m.reason, true
		}
	}
	if standing != nil && standing.st == aegis.StatusUnhealthy {
		return standing.at.Sub(crash), standing.reason + ", before the crash", true
	}
	return 0, "", false
}

// before counts changes to unhealthy before the crash on nodes 2 and 3.
func (t *statusTrail) before(crash time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, ms := range t.marks {
		for _, m := range ms {
			if m.at.Before(crash) && m.st == aegis.StatusUnhealthy {
				n++
			}
		}
	}
	return n
}

func registerOrder(atOnce bool) string {
	if atOnce {
		return "-register-at-once: the standbys right after the active"
	}
	return "the standbys once nodes 2 and 3 see the active"
}

// waitUntil polls cond every 5 ms until it holds or limit passes.
func waitUntil(limit time.Duration, cond func() bool) error {
	for deadline := time.Now().Add(limit); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", limit)
		}
	}
	return nil
}

func crashName(crash string) string {
	if crash == "blackhole" {
		return "cut node 1 off from every other node (-crash blackhole: a partition on the in-memory network; node 1 keeps running, isolated)"
	}
	return "Shutdown() node 1 (abrupt: no Leave)"
}
