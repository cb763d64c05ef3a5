// Command activestandby shows an active/standby role group on loopback over
// the real network: three nodes each host a member of service "ledger", one
// registered RoleActive and two RoleStandby (PromoteWithMajority, the
// default); a fourth node calls the group with CallWithFailover in a loop,
// and the active's node is shut down abruptly (Shutdown, no Leave) mid-run.
//
// It prints a timeline relative to the crash: the last call the old active
// answered, when each surviving node saw the old active unhealthy and the
// promotion (EventRoleChanged), the promoted registration's OnRoleChange,
// and the first call the new active answered. It exits non-zero if any call
// failed, if no standby was promoted, or if two instances ever answered as
// the active at once: every handler run is logged with its instance and
// Request.Epoch, and no run may carry an older epoch than one that started
// before it, nor two instances one epoch.
//
// Timeouts are shortened (LocalGossip, heartbeats every 100ms with a 500ms
// timeout, RoleLeaseTimeout 400ms) so the whole run takes a few seconds.
package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis"
)

const (
	service      = "ledger"
	leaseTimeout = 400 * time.Millisecond
	beforeCrash  = time.Second            // calls flow this long before the crash
	afterAnswer  = 500 * time.Millisecond // and this long after the new active's first answer
	waitLimit    = 10 * time.Second       // for any one thing the run waits for
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "activestandby FAILED:", err)
		os.Exit(1)
	}
}

func newNode(name string) (*aegis.Node, error) {
	cfg := aegis.DefaultConfig()
	cfg.NodeName = name
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Gossip = aegis.LocalGossip()
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.HeartbeatTimeout = 500 * time.Millisecond
	cfg.HealthCheckInterval = 50 * time.Millisecond
	cfg.RoleLeaseTimeout = leaseTimeout // every node of the cluster uses the same
	cfg.AttemptTimeout = time.Second
	return aegis.New(cfg)
}

// handlerRun is one run of a ledger handler: which instance ran it and the
// Request.Epoch it carried, in the order runs started across all nodes (they
// share this process).
type handlerRun struct {
	id    string
	epoch uint64
}

// runLog records every handler run.
type runLog struct {
	mu   sync.Mutex
	runs []handlerRun
}

func (l *runLog) handler(id string) aegis.Handler {
	return func(ctx context.Context, req *aegis.Request) ([]byte, error) {
		l.mu.Lock()
		l.runs = append(l.runs, handlerRun{id: id, epoch: req.Epoch})
		l.mu.Unlock()
		return fmt.Appendf(nil, "%s@%d", id, req.Epoch), nil
	}
}

// check returns an error if two instances answered as the active at once:
// a run with an older epoch after one with a newer epoch, or two instances
// with one epoch. It also returns the runs per epoch and who ran them.
func (l *runLog) check() (map[uint64]int, map[uint64]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	count := map[uint64]int{}
	owner := map[uint64]string{}
	var high uint64
	for i, r := range l.runs {
		if r.epoch < high {
			return count, owner, fmt.Errorf("handler run %d by %s carried epoch %d after a run with epoch %d: two actives answered at once", i+1, r.id, r.epoch, high)
		}
		if o, ok := owner[r.epoch]; ok && o != r.id {
			return count, owner, fmt.Errorf("handler run %d: %s and %s both answered with epoch %d", i+1, o, r.id, r.epoch)
		}
		high = r.epoch
		count[r.epoch]++
		owner[r.epoch] = r.id
	}
	return count, owner, nil
}

// mark is one line of the timeline.
type mark struct {
	at        time.Time
	who, what string
}

type timeline struct {
	mu    sync.Mutex
	marks []mark
}

func (t *timeline) add(at time.Time, who, format string, args ...any) {
	t.mu.Lock()
	t.marks = append(t.marks, mark{at, who, fmt.Sprintf(format, args...)})
	t.mu.Unlock()
}

// has reports whether a mark by who contains what.
func (t *timeline) has(who, what string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.ContainsFunc(t.marks, func(m mark) bool { return m.who == who && strings.Contains(m.what, what) })
}

// print writes the marks from since on, in time order, in ms relative to zero.
func (t *timeline) print(w io.Writer, since, zero time.Time) {
	t.mu.Lock()
	ms := slices.Clone(t.marks)
	t.mu.Unlock()
	slices.SortStableFunc(ms, func(a, b mark) int { return a.at.Compare(b.at) })
	for _, m := range ms {
		if !m.at.Before(since) {
			d := m.at.Sub(zero).Round(100 * time.Microsecond) // no "-0.0"
			fmt.Fprintf(w, "  %8.1f  %-9s %s\n", float64(d)/float64(time.Millisecond), m.who, m.what)
		}
	}
}

// watch adds what node nd sees of the group to tl: the first time each
// member turns unhealthy, and every role change.
func watch(nd *aegis.Node, tl *timeline) {
	var mu sync.Mutex
	bad := map[string]bool{}
	nd.Subscribe(func(ev aegis.Event) { // Shutdown cancels it
		if ev.Instance.Service != service {
			return
		}
		switch {
		case ev.Type == aegis.EventStatusChanged && ev.NewStatus == aegis.StatusUnhealthy:
			mu.Lock()
			first := !bad[ev.Instance.ID]
			bad[ev.Instance.ID] = true
			mu.Unlock()
			if first {
				tl.add(ev.Time, nd.Name(), "sees %s unhealthy (%s)", ev.Instance.ID, ev.Reason)
			}
		case ev.Type == aegis.EventRoleChanged:
			tl.add(ev.Time, nd.Name(), "event role-changed: %s is %s, epoch %d (%s)", ev.Instance.ID, ev.Instance.Role, ev.Instance.Epoch, ev.Reason)
		}
	})
}

// waitFor polls cond every 10ms until it holds or waitLimit passes.
func waitFor(what string, cond func() bool) error {
	for deadline := time.Now().Add(waitLimit); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting until %s", waitLimit, what)
		}
	}
	return nil
}

// settled reports whether nd sees ledger-0 active with epoch 1 and both
// standbys healthy.
func settled(nd *aegis.Node) bool {
	v := nd.Roles(service)
	return len(v) == 1 && v[0].Active != nil && v[0].Active.ID == "ledger-0" && v[0].Epoch == 1 &&
		len(v[0].Standbys) == 2 && v[0].Standbys[1].Status == aegis.StatusHealthy
}

// seesActive reports whether nd sees an active in the group.
func seesActive(nd *aegis.Node) bool {
	v := nd.Roles(service)
	return len(v) == 1 && v[0].Active != nil
}

// answer is what the client saw of one call.
type answer struct {
	end  time.Time
	by   string // "ledger-1@2", or "" when the call failed
	err  error
	took time.Duration
}

// cluster is the example's four nodes: the client and three servers.
type cluster struct {
	client  *aegis.Node
	servers []*aegis.Node
	regs    []*aegis.Registration
	runs    runLog
	tl      timeline
	crashed atomic.Bool  // set just before the crash
	early   atomic.Int32 // role changes before it
}

func (c *cluster) shutdown() {
	for _, s := range c.servers {
		_ = s.Shutdown()
	}
	if c.client != nil {
		_ = c.client.Shutdown()
	}
}

// start brings up the client and three servers, registers ledger-0 as the
// active and ledger-1 (priority 2), ledger-2 (priority 1) as standbys, and
// waits until every node sees that.
func (c *cluster) start(ctx context.Context) error {
	var err error
	if c.client, err = newNode("client"); err != nil {
		return err
	}
	watch(c.client, &c.tl)
	for i := range 3 {
		s, err := newNode(fmt.Sprintf("server-%d", i))
		if err != nil {
			return err
		}
		c.servers = append(c.servers, s)
		watch(s, &c.tl)
		if _, err := s.Join(ctx, c.client.Addr()); err != nil {
			return err
		}
	}
	for i, s := range c.servers {
		id := fmt.Sprintf("ledger-%d", i)
		svc := aegis.Service{Name: service, InstanceID: id, Handler: c.runs.handler(id),
			Role: aegis.RoleStandby, Priority: 3 - i, Promotion: aegis.PromoteWithMajority}
		if i == 0 {
			svc.Role = aegis.RoleActive
		}
		reg, err := s.Register(ctx, svc)
		if err != nil {
			return err
		}
		reg.OnRoleChange(func(ch aegis.RoleChange) {
			if !c.crashed.Load() {
				c.early.Add(1)
			}
			c.tl.add(time.Now(), id, "OnRoleChange: now %s, epoch %d (%s)", ch.Role, ch.Epoch, ch.Reason)
		})
		c.regs = append(c.regs, reg)
		if i == 0 {
			// Register the standbys once their nodes know the active: a
			// standby whose node still knows no active RoleLeaseTimeout
			// after it registered stands for promotion, and counts its
			// majority among the members its node knows.
			if err := waitFor("server-1 and server-2 see ledger-0 active", func() bool {
				return seesActive(c.servers[1]) && seesActive(c.servers[2])
			}); err != nil {
				return err
			}
		}
	}
	return waitFor("every node sees ledger-0 active with epoch 1 and two healthy standbys", func() bool {
		return settled(c.client) && settled(c.servers[0]) && settled(c.servers[1]) && settled(c.servers[2])
	})
}

// callLoop calls the group from the client until stop is closed.
func (c *cluster) callLoop(stop <-chan struct{}, mu *sync.Mutex, answers *[]answer, newActive *atomic.Bool) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		t0 := time.Now()
		cctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		out, err := c.client.CallWithFailover(cctx, service, "append", []byte("entry"))
		cancel()
		a := answer{end: time.Now(), by: string(out), err: err}
		a.took = a.end.Sub(t0)
		if err == nil && !strings.HasPrefix(a.by, "ledger-0@") {
			newActive.Store(true)
		}
		mu.Lock()
		*answers = append(*answers, a)
		mu.Unlock()
		time.Sleep(time.Millisecond)
	}
}

func run(w io.Writer) error {
	ctx := context.Background()
	var c cluster
	defer c.shutdown()
	if err := c.start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: ledger-0 active on server-0 (epoch 1); standbys ledger-1 (priority 2) on server-1, ledger-2 (priority 1) on server-2; %s\n",
		service, aegis.PromoteWithMajority)
	fmt.Fprintf(w, "timings (shortened): LocalGossip, heartbeats every 100ms, unhealthy after 500ms without one; RoleLeaseTimeout %v, so a standby is promoted no sooner than %v after the old active's last confirmed lease\n",
		leaseTimeout, leaseTimeout*3/2)
	fmt.Fprintf(w, "client: CallWithFailover in a loop; server-0 crashes (Shutdown, no Leave) after %v\n", beforeCrash)

	var mu sync.Mutex
	var answers []answer
	var newActive atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { c.callLoop(stop, &mu, &answers, &newActive) })
	started := time.Now()
	time.Sleep(beforeCrash)

	c.crashed.Store(true)
	crash := time.Now()
	_ = c.servers[0].Shutdown()
	c.tl.add(crash, "server-0", "shut down abruptly (Shutdown without Leave, returned after %.1f ms)", float64(time.Since(crash))/float64(time.Millisecond))
	errWait := waitFor("the client gets an answer from a new active", newActive.Load)
	if errWait == nil {
		time.Sleep(afterAnswer)
	}
	close(stop)
	wg.Wait()
	if errWait != nil {
		return errWait
	}
	// Events arrive on subscriber goroutines: wait until every surviving
	// node has reported the promotion.
	newID := ""
	for _, a := range answers {
		if a.err == nil && !strings.HasPrefix(a.by, "ledger-0@") {
			newID, _, _ = strings.Cut(a.by, "@")
			break
		}
	}
	for _, who := range []string{"client", "server-1", "server-2", newID} {
		if err := waitFor(who+" reports the promotion of "+newID, func() bool {
			what := "role-changed: " + newID + " is active"
			if who == newID {
				what = "OnRoleChange: now active"
			}
			return c.tl.has(who, what)
		}); err != nil {
			return err
		}
	}

	var ok, failed int
	var firstErr error
	var lastOld, firstNew *answer
	var longest time.Duration
	for i := range answers {
		a := &answers[i]
		if a.err != nil {
			failed++
			firstErr = cmp.Or(firstErr, a.err)
			continue
		}
		ok++
		longest = max(longest, a.took)
		if strings.HasPrefix(a.by, "ledger-0@") {
			lastOld = a
		} else if firstNew == nil {
			firstNew = a
		}
	}
	if lastOld != nil {
		c.tl.add(lastOld.end, "client", "last call answered by the old active: %s", lastOld.by)
	}
	if firstNew != nil {
		c.tl.add(firstNew.end, "client", "first call answered by the new active: %s (the call took %.1f ms)", firstNew.by, float64(firstNew.took)/float64(time.Millisecond))
	}
	fmt.Fprintf(w, "\ntimeline (ms from the crash):\n")
	c.tl.print(w, started, crash)

	count, owner, overlap := c.runs.check()
	var epochs []string
	for _, e := range slices.Sorted(maps.Keys(count)) {
		epochs = append(epochs, fmt.Sprintf("epoch %d: %d by %s", e, count[e], owner[e]))
	}
	fmt.Fprintf(w, "\ncalls: %d answered, %d failed; longest call %.1f ms; handler runs: %s\n",
		ok, failed, float64(longest)/float64(time.Millisecond), strings.Join(epochs, ", "))
	switch {
	case failed > 0:
		return fmt.Errorf("%d calls failed, first: %v", failed, firstErr)
	case overlap != nil:
		return overlap
	case lastOld == nil || firstNew == nil:
		return fmt.Errorf("expected answers from both the old and the new active")
	case c.early.Load() > 0:
		return fmt.Errorf("%d role changes before the crash", c.early.Load())
	}
	fmt.Fprintln(w, "no call failed, and no two instances answered as the active at once (handler runs in epoch order, one instance per epoch)")
	return nil
}
