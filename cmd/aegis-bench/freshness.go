package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

// ageHist is a histogram of ages with 1 ms buckets.
type ageHist struct {
	buckets []uint64
	over    uint64 // beyond the last bucket
	n       uint64
	max     time.Duration
}

func newAgeHist(limit time.Duration) *ageHist {
	return &ageHist{buckets: make([]uint64, int(limit/time.Millisecond)+1)}
}

func (h *ageHist) add(d time.Duration) {
	d = max(d, 0)
	h.n++
	h.max = max(h.max, d)
	b := int(d / time.Millisecond)
	if b >= len(h.buckets) {
		h.over++
		return
	}
	h.buckets[b]++
}

// quantile returns the upper edge of the bucket holding the p-quantile.
func (h *ageHist) quantile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	need := uint64(p*float64(h.n) + 0.999999)
	var seen uint64
	for i, c := range h.buckets {
		seen += c
		if seen >= need {
			return min(time.Duration(i+1)*time.Millisecond, h.max)
		}
	}
	return h.max
}

// sumStats adds up every node's Stats.
func sumStats(nodes []*aegis.Node) aegis.Stats {
	var s aegis.Stats
	for _, nd := range nodes {
		x := nd.Stats()
		s.GossipReceived += x.GossipReceived
		s.GossipDropped += x.GossipDropped
		s.HeartbeatsSent += x.HeartbeatsSent
		s.HeartbeatsReceived += x.HeartbeatsReceived
		s.HeartbeatsUnknown += x.HeartbeatsUnknown
		s.HeartbeatWants += x.HeartbeatWants
		s.HeartbeatRepairs += x.HeartbeatRepairs
	}
	return s
}

func statsDelta(a, b aegis.Stats) aegis.Stats {
	return aegis.Stats{
		GossipReceived:     b.GossipReceived - a.GossipReceived,
		GossipDropped:      b.GossipDropped - a.GossipDropped,
		HeartbeatsSent:     b.HeartbeatsSent - a.HeartbeatsSent,
		HeartbeatsReceived: b.HeartbeatsReceived - a.HeartbeatsReceived,
		HeartbeatsUnknown:  b.HeartbeatsUnknown - a.HeartbeatsUnknown,
		HeartbeatWants:     b.HeartbeatWants - a.HeartbeatWants,
		HeartbeatRepairs:   b.HeartbeatRepairs - a.HeartbeatRepairs,
	}
}

// registerEach registers perNode instances of svc on every node, IDs
// i-<node>-<j>, and waits until every node sees all of them.
func (c *cluster) registerEach(ctx context.Context, svc string, perNode int) error {
	n := len(c.nodes)
	t0 := time.Now()
	for i := range c.nodes {
		for j := range perNode {
			if _, err := c.register(ctx, i, svc, fmt.Sprintf("i-%d-%d", i, j)); err != nil {
				return err
			}
		}
	}
	if ok, k := c.waitCount(svc, n*perNode, nil, c.opt.cap); !ok {
		return fmt.Errorf("only %d/%d nodes saw all %d %q instances after %v", k, n, n*perNode, svc, c.opt.cap)
	}
	progress("  all %d nodes see all %d %q instances after %v; settling %v", n, n*perNode, svc, roundD(time.Since(t0)), c.opt.settle)
	time.Sleep(c.opt.settle)
	return nil
}

func runFreshness(args []string) error {
	fs := flag.NewFlagSet("freshness", flag.ContinueOnError)
	var opt common
	opt.register(fs)
	n := fs.Int("n", 50, "nodes")
	per := fs.Int("instances", 5, "instances registered on each node")
	dur := fs.Duration("duration", 60*time.Second, "sampling window")
	every := fs.Duration("every", 100*time.Millisecond, "sampling period")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := opt.validate(); err != nil {
		return err
	}
	if *n < 2 || *per < 1 || *dur <= 0 || *every <= 0 {
		return fmt.Errorf("need -n >= 2, -instances >= 1, positive -duration and -every")
	}
	def := aegis.DefaultConfig()
	interval := def.HeartbeatInterval
	ctx := context.Background()
	const svc = "fresh"

	progress("freshness N=%d, %d instances per node, window %v", *n, *per, *dur)
	c := newCluster(&opt, *n, false)
	defer c.shutdown()
	if err := c.startAll(ctx, nil); err != nil {
		return err
	}
	if err := c.registerEach(ctx, svc, *per); err != nil {
		return err
	}
	c.startLoss()

	total := *n * *per
	index := make(map[string]int, total)
	for i := range *n {
		for j := range *per {
			index[fmt.Sprintf("i-%d-%d", i, j)] = len(index)
		}
	}
	type pairState struct {
		last    time.Time // newest LastHeartbeat seen
		updates int
	}
	state := make([][]pairState, *n) // [node][instance]
	for i := range state {
		state[i] = make([]pairState, total)
	}
	hist := newAgeHist(10 * time.Minute)
	var (
		maxAgeNode, maxAgeInst string
		badSamples, missing    uint64
		badPairs               = map[[2]int]bool{}
		badInsts               = map[int]bool{}
		gapEvents              int
		gapInsts               = map[int]bool{}
		maxGap                 time.Duration
		passes                 int
		passTime, maxPass      time.Duration
	)
	ids := make([]string, total)
	for id, k := range index {
		ids[k] = id
	}

	stats0 := sumStats(c.nodes)
	progress("  sampling every %v for %v", *every, *dur)
	tick := time.NewTicker(*every)
	defer tick.Stop()
	start := time.Now()
	end := start.Add(*dur)
	nextReport := start.Add(10 * time.Second)
	for time.Now().Before(end) {
		<-tick.C
		ps := time.Now()
		for i, nd := range c.nodes {
			insts := nd.Instances(svc)
			now := time.Now()
			seen := 0
			for _, in := range insts {
				k, ok := index[in.ID]
				if !ok {
					continue
				}
				seen++
				age := now.Sub(in.LastHeartbeat)
				hist.add(age)
				if age >= hist.max {
					maxAgeNode, maxAgeInst = nd.Name(), in.ID
				}
				if in.Status != aegis.StatusHealthy {
					badSamples++
					badPairs[[2]int{i, k}] = true
					badInsts[k] = true
				}
				st := &state[i][k]
				if !st.last.IsZero() && in.LastHeartbeat.After(st.last) {
					gap := in.LastHeartbeat.Sub(st.last)
					maxGap = max(maxGap, gap)
					if gap > 2*interval {
						gapEvents++
						gapInsts[k] = true
					}
					st.updates++
				}
				if in.LastHeartbeat.After(st.last) {
					st.last = in.LastHeartbeat
				}
			}
			missing += uint64(total - seen)
		}
		d := time.Since(ps)
		passes++
		passTime += d
		maxPass = max(maxPass, d)
		if time.Now().After(nextReport) {
			progress("  %v: max age so far %v, not healthy samples %d, gaps > 2×interval %d", roundD(time.Since(start)), roundD(hist.max), badSamples, gapEvents)
			nextReport = nextReport.Add(10 * time.Second)
		}
	}
	window := time.Since(start)
	stats1 := sumStats(c.nodes)
	// A heartbeat that never came shows as a still-open gap at the end.
	now := time.Now()
	openGaps := 0
	for i := range state {
		for k := range state[i] {
			if st := state[i][k]; !st.last.IsZero() && now.Sub(st.last) > 2*interval {
				openGaps++
				gapInsts[k] = true
			}
		}
	}
	updates := 0
	for i := range state {
		for k := range state[i] {
			updates += state[i][k].updates
		}
	}
	// Event-based check: any transition to unhealthy, even between samples.
	evBad := 0
	evReasons := map[string]int{}
	for _, v := range c.views {
		for k := range index {
			if b, ok := v.bad(instKey{svc, k}); ok {
				evBad++
				evReasons[b.reason]++
			}
		}
	}

	header("freshness", &opt,
		fmt.Sprintf("procedure: start %d nodes, join them, register %d instances of service %q on each (%d instances), wait until every node sees all of them, sleep -settle; then sample every %v for %v: on every node, Instances(%q), and for every instance now − LastHeartbeat", *n, *per, svc, total, *every, *dur, svc),
		fmt.Sprintf("a lost heartbeat is a gap larger than 2×HeartbeatInterval (%v) between consecutive LastHeartbeat values one node holds for one instance (also counted: a gap still open at the end)", 2*interval),
		fmt.Sprintf("sampling passes: %d in %v (mean %v, max %v per pass over all nodes)", passes, roundD(window), roundD(passTime/time.Duration(max(passes, 1))), roundD(maxPass)),
	)

	rows := [][]string{
		{"samples (node × instance × pass)", strconv.FormatUint(hist.n, 10)},
		{"heartbeat age: median (ms)", ms(hist.quantile(0.5))},
		{"heartbeat age: p99 (ms)", ms(hist.quantile(0.99))},
		{"heartbeat age: max (ms)", fmt.Sprintf("%s (node %s, instance %s)", ms(hist.max), maxAgeNode, maxAgeInst)},
		{"heartbeat timeout (ms)", ms(def.HeartbeatTimeout)},
		{"instances ever sampled not healthy (must be 0)", fmt.Sprintf("%d of %d (%d node×instance pairs, %d samples)", len(badInsts), total, len(badPairs), badSamples)},
		{"node×instance pairs that ever turned unhealthy by events (must be 0)", strings.TrimSpace(fmt.Sprintf("%d %s", evBad, reasonsString(evReasons)))},
		{"instance missing from a node's view (samples)", strconv.FormatUint(missing, 10)},
		{"LastHeartbeat updates observed", fmt.Sprintf("%d (expected about %d = pairs × window / interval)", updates, int(float64(*n*total)*window.Seconds()/interval.Seconds()))},
		{"largest gap between LastHeartbeat updates (ms)", ms(maxGap)},
		{"lost heartbeats: gaps > 2×interval", fmt.Sprintf("%d closed + %d still open at the end", gapEvents, openGaps)},
		{"lost heartbeats: instances affected", fmt.Sprintf("%d of %d", len(gapInsts), total)},
	}
	table([]string{"metric", "value"}, rows)

	d := statsDelta(stats0, stats1)
	secs := window.Seconds()
	fmt.Println("Stats() summed over all nodes:")
	fmt.Println()
	srows := [][]string{}
	add := func(name string, tot, win uint64) {
		srows = append(srows, []string{name, strconv.FormatUint(tot, 10), strconv.FormatUint(win, 10),
			fmt.Sprintf("%.2f", float64(win)/secs/float64(*n))})
	}
	add("GossipReceived", stats1.GossipReceived, d.GossipReceived)
	add("GossipDropped", stats1.GossipDropped, d.GossipDropped)
	add("HeartbeatsSent", stats1.HeartbeatsSent, d.HeartbeatsSent)
	add("HeartbeatsReceived", stats1.HeartbeatsReceived, d.HeartbeatsReceived)
	add("HeartbeatsUnknown", stats1.HeartbeatsUnknown, d.HeartbeatsUnknown)
	add("HeartbeatWants", stats1.HeartbeatWants, d.HeartbeatWants)
	add("HeartbeatRepairs", stats1.HeartbeatRepairs, d.HeartbeatRepairs)
	table([]string{"counter", "total since start", "during window", "per node per second (window)"}, srows)
	return nil
}

func reasonsString(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := "("
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s ×%d", k, m[k])
	}
	return s + ")"
}
