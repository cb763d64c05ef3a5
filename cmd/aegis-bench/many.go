package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/aegisipc/aegis"
)

// manyResult is what one run of the many subcommand measured.
type manyResult struct {
	regTotal, regFirst, regLast time.Duration   // all, first and last 10% of Register calls
	healthyAt                   []time.Duration // per node: until it saw every instance healthy; -1 if never
	badDuringWatch              []int           // per node: instances it saw turn unhealthy while watched
	stats                       aegis.Stats
}

func runMany(args []string) error {
	fs := flag.NewFlagSet("many", flag.ContinueOnError)
	var opt common
	opt.register(fs)
	n := fs.Int("n", 3, "nodes")
	count := fs.Int("instances", 10000, "instances registered on node 0, one after another")
	limit := fs.Duration("healthy-within", 5*time.Second, "how long after the last Register every node may take to see all instances healthy")
	watch := fs.Duration("watch", 2*time.Minute, "how long to watch for any instance turning unhealthy afterwards")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if err := opt.validate(); err != nil {
		return err
	}
	if *n < 2 || *count < 1 || *limit <= 0 || *watch < 0 {
		return fmt.Errorf("need -n >= 2, -instances >= 1, positive -healthy-within")
	}
	ctx := context.Background()
	progress("many: %d instances on node 0 of %d", *count, *n)
	c := newCluster(&opt, *n, false)
	defer c.shutdown()
	if err := c.startAll(ctx, func(cfg *aegis.Config) { cfg.MaxInstancesPerNode = max(cfg.MaxInstancesPerNode, *count) }); err != nil {
		return err
	}
	if err := c.settle(ctx); err != nil {
		return err
	}
	res, err := c.many(ctx, *count, *limit, *watch)
	if err != nil {
		return err
	}
	header("many", &opt,
		fmt.Sprintf("procedure: %d nodes settle; node 0 registers %d instances of service \"bulk\" one after another (Register, no concurrency); then every node's HealthyInstances(\"bulk\") is polled every 50 ms until it holds all of them (limit %v after the last Register); then every node's events are watched for %v for any instance turning unhealthy", *n, *count, *limit, *watch),
	)
	rows := [][]string{
		{"Register × " + fmt.Sprint(*count) + ", total", roundD(res.regTotal).String(), "< 2 s"},
		{"first 10% of the calls", roundD(res.regFirst).String(), ""},
		{"last 10% of the calls", roundD(res.regLast).String(), ""},
	}
	for i, d := range res.healthyAt {
		v := "never (within the limit)"
		if d >= 0 {
			v = roundD(d).String()
		}
		rows = append(rows, []string{fmt.Sprintf("node %d sees all healthy, after the last Register", i), v, "< 5 s"})
	}
	for i, b := range res.badDuringWatch {
		rows = append(rows, []string{fmt.Sprintf("node %d: instances turned unhealthy in the next %v", i, *watch), fmt.Sprint(b), "0"})
	}
	rows = append(rows,
		[]string{"HeartbeatsUnknown (all nodes, whole run)", fmt.Sprint(res.stats.HeartbeatsUnknown), ""},
		[]string{"GossipDropped (all nodes, whole run)", fmt.Sprint(res.stats.GossipDropped), ""},
	)
	table([]string{"measure", "value", "target"}, rows)
	return nil
}

// many registers count instances on node 0, waits until every node sees
// them all healthy, then watches for unhealthy verdicts.
func (c *cluster) many(ctx context.Context, count int, limit, watch time.Duration) (manyResult, error) {
	var res manyResult
	tenth := max(count/10, 1)
	t0 := time.Now()
	var lastStart time.Time
	for j := range count {
		if j == count-tenth {
			lastStart = time.Now()
		}
		if _, err := c.register(ctx, 0, "bulk", fmt.Sprintf("b-%05d", j)); err != nil {
			return res, err
		}
		if j == tenth-1 {
			res.regFirst = time.Since(t0)
		}
	}
	done := time.Now()
	res.regTotal = done.Sub(t0)
	res.regLast = done.Sub(lastStart)
	progress("  registered %d in %v (first %d in %v, last %d in %v)", count, roundD(res.regTotal), tenth, roundD(res.regFirst), tenth, roundD(res.regLast))
	res.healthyAt = c.waitHealthy("bulk", count, done, limit)
	progress("  all healthy: %v; watching %v", res.healthyAt, watch)
	before := make([]int, len(c.nodes))
	for i, v := range c.views {
		before[i] = v.badCount()
	}
	time.Sleep(watch)
	res.badDuringWatch = make([]int, len(c.nodes))
	for i, v := range c.views {
		res.badDuringWatch[i] = v.badCount() - before[i]
	}
	res.stats = sumStats(c.nodes)
	return res, nil
}

// waitHealthy polls every node until it sees want healthy instances of svc
// or limit has passed since from; it returns each node's time since from,
// -1 for one that never got there.
func (c *cluster) waitHealthy(svc string, want int, from time.Time, limit time.Duration) []time.Duration {
	out := make([]time.Duration, len(c.nodes))
	for i := range out {
		out[i] = -1
	}
	for left := len(c.nodes); left > 0 && time.Since(from) <= limit; time.Sleep(50 * time.Millisecond) {
		for i, nd := range c.nodes {
			if out[i] < 0 && len(nd.HealthyInstances(svc)) == want {
				out[i] = time.Since(from)
				left--
			}
		}
	}
	return out
}

// badCount is how many instances this node has seen turn unhealthy.
func (v *view) badCount() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.badAt)
}
