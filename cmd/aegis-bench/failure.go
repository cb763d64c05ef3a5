package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

type failureResult struct {
	n, victim       int
	victimName      string
	seen            int           // other nodes that reported the victim's instance unhealthy
	first, p50, all time.Duration // -1 if not reached
	shutdownTook    time.Duration
	reasons         map[string]int
	deregistered    map[string]int // nodes that saw it deregistered instead, by reason
	err             error
}

func runFailure(args []string) error {
	fs := flag.NewFlagSet("failure", flag.ContinueOnError)
	var opt common
	opt.register(fs)
	ns := fs.String("n", "5,20", "comma-separated cluster sizes")
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
		if n < 3 {
			return fmt.Errorf("cluster size %d: need at least 3 nodes", n)
		}
	}

	results := map[int][]failureResult{}
	for _, n := range sizes {
		for r := 1; r <= *runs; r++ {
			progress("failure N=%d run %d/%d", n, r, *runs)
			fr := failureRun(&opt, n)
			switch {
			case fr.err != nil:
				progress("  run FAILED: %v", fr.err)
			case fr.seen == n-1:
				progress("  all %d peers saw %s unhealthy after %s ms %s", n-1, fr.victimName, ms(fr.all), reasonsString(fr.reasons))
			default:
				progress("  only %d/%d peers saw %s unhealthy within %v", fr.seen, n-1, fr.victimName, opt.cap)
			}
			results[n] = append(results[n], fr)
			time.Sleep(300 * time.Millisecond)
		}
	}

	g := opt.gossipConfig()
	var susp []string
	for _, n := range sizes {
		lo := suspicionTimeout(g.SuspicionMult, n, g.ProbeInterval)
		susp = append(susp, fmt.Sprintf("N=%d: %v to %v", n, roundD(lo), roundD(6*lo)))
	}
	header("failure", &opt,
		"procedure: start N nodes, join them, register one instance of service \"svc\" on each, wait until every node sees all N, sleep -settle; then Shutdown() one random node other than node 0 (abrupt: no leave message)",
		"measured: from just before Shutdown() until every other node has an EventStatusChanged to StatusUnhealthy for the victim's instance (event timestamps); the reasons those events carried are listed",
		fmt.Sprintf("for reference, memberlist's suspicion timeout (SuspicionMult × max(1, log10 N) × ProbeInterval, up to 6× that under Lifeguard): %s", strings.Join(susp, "; ")),
		fmt.Sprintf("sizes %v, %d runs each; times in ms", sizes, *runs),
	)

	var rows [][]string
	for _, n := range sizes {
		for r, fr := range results[n] {
			res := "ok"
			switch {
			case fr.err != nil:
				res = "FAILED: " + fr.err.Error()
			case fr.seen < n-1:
				res = fmt.Sprintf("NOT all within %v", opt.cap)
			}
			if len(fr.deregistered) > 0 {
				res += "; deregistered instead on some nodes " + reasonsString(fr.deregistered)
			}
			rows = append(rows, []string{strconv.Itoa(n), strconv.Itoa(r + 1), fr.victimName,
				fmtPct(fr.first), fmtPct(fr.p50), fmtPct(fr.all), fmt.Sprintf("%d/%d", fr.seen, n-1),
				reasonsString(fr.reasons), ms(fr.shutdownTook), res})
		}
	}
	table([]string{"N", "run", "victim", "first node (ms)", "50% of nodes (ms)", "all nodes (ms)", "nodes", "reasons seen", "Shutdown() took (ms)", "result"}, rows)

	fmt.Println("Summary: time until every other node reports the instance unhealthy:")
	fmt.Println()
	rows = nil
	for _, n := range sizes {
		var d []time.Duration
		reasons := map[string]int{}
		for _, fr := range results[n] {
			if fr.err == nil && fr.seen == n-1 {
				d = append(d, fr.all)
			}
			for k, v := range fr.reasons {
				reasons[k] += v
			}
		}
		s := summarize(d)
		row := []string{strconv.Itoa(n), fmt.Sprintf("%d/%d", len(d), len(results[n]))}
		if len(d) > 0 {
			row = append(row, ms(s.min), ms(s.med), ms(s.max))
		} else {
			row = append(row, "—", "—", "—")
		}
		row = append(row, reasonsString(reasons))
		rows = append(rows, row)
	}
	table([]string{"N", "complete runs", "min (ms)", "median (ms)", "max (ms)", "reasons (all runs)"}, rows)
	return nil
}

// suspicionTimeout mirrors memberlist's formula, for the report only.
func suspicionTimeout(mult, n int, interval time.Duration) time.Duration {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	return time.Duration(float64(mult) * scale * float64(interval))
}

func failureRun(opt *common, n int) failureResult {
	ctx := context.Background()
	fr := failureResult{n: n, first: -1, p50: -1, all: -1, reasons: map[string]int{}, deregistered: map[string]int{}}
	c := newCluster(opt, n, false)
	defer c.shutdown()
	if err := c.startAll(ctx, nil); err != nil {
		fr.err = err
		return fr
	}
	if err := c.registerEach(ctx, "svc", 1); err != nil {
		fr.err = err
		return fr
	}
	fr.victim = 1 + rand.IntN(n-1)
	fr.victimName = c.nodes[fr.victim].Name()
	key := instKey{"svc", fmt.Sprintf("i-%d-0", fr.victim)}
	var others []int
	for i := range n {
		if i != fr.victim {
			others = append(others, i)
		}
	}

	t0 := time.Now()
	_ = c.nodes[fr.victim].Shutdown()
	fr.shutdownTook = time.Since(t0)

	deadline := t0.Add(opt.cap)
	for {
		k := 0
		for _, i := range others {
			if _, ok := c.views[i].bad(key); ok {
				k++
			}
		}
		if k == len(others) || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var times []time.Duration
	for _, i := range others {
		v := c.views[i]
		if b, ok := v.bad(key); ok {
			times = append(times, b.at.Sub(t0))
			fr.reasons[b.reason]++
		}
		v.mu.Lock()
		if why, ok := v.goneAt[key]; ok {
			fr.deregistered[why]++
		}
		v.mu.Unlock()
	}
	slices.Sort(times)
	fr.seen = len(times)
	if len(times) > 0 {
		fr.first = times[0]
	}
	half := (len(others) + 1) / 2
	if len(times) >= half {
		fr.p50 = times[half-1]
	}
	if len(times) == len(others) {
		fr.all = times[len(times)-1]
	}
	return fr
}
