//go:build unix

// This file runs one soak: the agent processes, the client node, the load
// and the faults, then the final probes, the stop of every process and the
// final report.

package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/agentproc"
)

// serviceName is the count service every agent serves.
const serviceName = "count"

// Limits of the soak's waits.
const (
	convergeLimit = 30 * time.Second // for the client to see every instance healthy at the start
	recoverLimit  = 30 * time.Second // for a faulted agent to be routed to and answering again
	probeLimit    = 10 * time.Second // for the final probe of one instance
)

// options are the soak's settings.
type options struct {
	agentBin       string
	agents         int
	rate           float64
	duration       time.Duration
	faultEvery     time.Duration
	seed           uint64
	reportEvery    time.Duration
	hbInterval     time.Duration
	hbTimeout      time.Duration
	attemptTimeout time.Duration
	callTimeout    time.Duration
	logDir         string
}

// healthCheck is the agents' and the client's health-check interval.
func (o *options) healthCheck() time.Duration { return max(o.hbInterval/2, 10*time.Millisecond) }

// faultRecord is one fault as applied. Its fields are guarded by soak.mu.
type faultRecord struct {
	plan      faultPlan
	name      string
	pid       int       // the process faulted
	at        time.Time // when the signal was sent
	exitAfter time.Duration
	exitCode  int
	newPid    int
	ports     string        // restarts: the ports the new process took
	resumed   time.Time     // SIGCONT sent, or the new process started
	recovered time.Duration // from resumed until routed to and answering
	done      bool
	failure   string // what went wrong, if anything
}

// soak is one run. Lock order: mu before eventLog.mu.
type soak struct {
	o    *options
	out  io.Writer // the report
	diag io.Writer // progress
	set  agentSettings

	mu      sync.Mutex     // guards agents, history, faults and the fault records
	agents  []*agentProc   // the current process of each agent
	history []*agentProc   // every process, in start order
	faults  []*faultRecord // in order

	client     *aegis.Node
	clientLog  *logScan
	clientFile *os.File // the client's log file
	events     *eventLog
	drv        *driver
	loadStart  time.Time
	// reportedStarts is how many calls had started at the last period
	// report; only the report loop uses it.
	reportedStarts int64
	loadEnd        time.Time
	clientStart    procStat
}

// result is what a soak found.
type result struct {
	pass        bool
	interrupted bool
	calls       int
	errors      int
	delivery    *delivery
	faults      int
	unrecovered int
	verdict     string
}

// instanceID is the ID of the instance agent name serves.
func instanceID(name string) string { return serviceName + "-" + name }

// run runs the soak described by o, writing the report to out and progress
// to diag. It returns an error when the soak could not be run at all.
func run(ctx context.Context, o *options, out, diag io.Writer) (*result, error) {
	s := &soak{o: o, out: out, diag: diag, events: &eventLog{}}
	s.set = agentSettings{bin: o.agentBin, key: base64.StdEncoding.EncodeToString(aegis.NewSecretKey()), service: serviceName,
		hbInterval: o.hbInterval, hbTimeout: o.hbTimeout, healthCheck: o.healthCheck(), logDir: o.logDir}
	if s.set.bin == "" {
		dir, err := os.MkdirTemp("", "aegis-soak-bin-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		start := time.Now()
		if s.set.bin, err = agentproc.Build(ctx, dir); err != nil {
			return nil, err
		}
		fmt.Fprintf(diag, "built the aegis binary in %v\n", time.Since(start).Round(time.Millisecond))
	}
	// Whatever happens, no process outlives the soak: each is killed by
	// its PID (a normal end has stopped them gracefully before).
	defer s.killAll()
	if err := s.startCluster(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if s.client != nil {
			_ = s.client.Shutdown()
		}
		if s.clientFile != nil {
			_ = s.clientFile.Close() // after Shutdown: the node logs until then
		}
	}()
	if err := s.startClient(ctx); err != nil {
		return nil, err
	}
	s.header()

	s.mu.Lock()
	for _, p := range s.agents {
		p.startStat = readProcStat(p.PID, -1)
	}
	s.mu.Unlock()
	s.clientStart = readProcStat(os.Getpid(), runtime.NumGoroutine())
	interrupted := s.load(ctx)

	probes := map[string]int64{}
	if !interrupted {
		probes = s.probe(ctx)
	}
	s.mu.Lock()
	for _, p := range s.agents {
		p.endStat = readProcStat(p.PID, -1)
	}
	s.mu.Unlock()
	e := ending{probes: probes, interrupted: interrupted, stats: s.client.Stats(),
		clientEnd: readProcStat(os.Getpid(), runtime.NumGoroutine())}
	e.stops = s.stopAll(interrupted)
	if err := s.client.Shutdown(); err != nil {
		fmt.Fprintf(diag, "client shutdown: %v\n", err)
	}
	s.client = nil
	// memberlist's goroutines end on their own after its Shutdown, which
	// does not wait for them: count right after and once they had time.
	e.clientAfter = runtime.NumGoroutine()
	time.Sleep(time.Second)
	e.clientSettled = runtime.NumGoroutine()
	return s.final(e), nil
}

// startCluster starts the agents: the first alone, the others joining it.
func (s *soak) startCluster(ctx context.Context) error {
	start := time.Now()
	for i := range s.o.agents {
		name := "n" + strconv.Itoa(i+1)
		var seeds []string
		if i > 0 {
			seeds = []string{s.agents[0].gossip}
		}
		p, err := startAgent(ctx, &s.set, name, 1, "127.0.0.1:0", "", seeds)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.agents = append(s.agents, p)
		s.history = append(s.history, p)
		s.mu.Unlock()
	}
	fmt.Fprintf(s.diag, "started %d agents in %v\n", s.o.agents, time.Since(start).Round(time.Millisecond))
	return nil
}

// startClient starts the client node, joins it to every agent and waits
// until it sees every instance healthy.
func (s *soak) startClient(ctx context.Context) error {
	key, _ := base64.StdEncoding.DecodeString(s.set.key)
	cfg := aegis.DefaultConfig()
	cfg.NodeName = "soak-client"
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Gossip = aegis.LocalGossip()
	cfg.HeartbeatInterval, cfg.HeartbeatTimeout, cfg.HealthCheckInterval = s.o.hbInterval, s.o.hbTimeout, s.o.healthCheck()
	cfg.AttemptTimeout = s.o.attemptTimeout
	cfg.SecretKey = key
	picks := &pickLog{}
	cfg.Balancer = &recordingBalancer{inner: aegis.RoundRobin(), log: picks}
	f, err := os.Create(filepath.Join(s.o.logDir, "client.log"))
	if err != nil {
		return err
	}
	s.clientLog, s.clientFile = newLogScan(), f
	cfg.Logger = slog.New(slog.NewJSONHandler(io.MultiWriter(f, s.clientLog), &slog.HandlerOptions{Level: slog.LevelInfo}))
	client, err := aegis.New(cfg)
	if err != nil {
		return err
	}
	s.client = client
	client.Subscribe(s.events.add)
	jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := client.Join(jctx, s.seeds(-1)...); err != nil {
		return err
	}
	start := time.Now()
	for len(client.HealthyInstances(serviceName)) < s.o.agents {
		if time.Since(start) > convergeLimit {
			return fmt.Errorf("the client sees %d of %d instances healthy after %v", len(client.HealthyInstances(serviceName)), s.o.agents, convergeLimit)
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return ctx.Err()
		}
	}
	fmt.Fprintf(s.diag, "the client sees every instance healthy after %v\n", time.Since(start).Round(time.Millisecond))
	s.drv = newDriver(client, picks, serviceName, s.o.rate, s.o.callTimeout, func() map[string][]processSpan { return s.spans(nil) })
	return nil
}

// seeds returns the gossip addresses of the running agents but the one at
// index except.
func (s *soak) seeds(except int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for i, p := range s.agents {
		if i != except && p.Alive() {
			out = append(out, p.gossip)
		}
	}
	return out
}

// load runs the calls and the faults for the soak's duration (longer if
// the last fault's recovery takes longer), printing a report every
// reportEvery. It reports whether ctx ended it.
func (s *soak) load(ctx context.Context) (interrupted bool) {
	s.loadStart = time.Now()
	end := s.loadStart.Add(s.o.duration)
	stopCalls := make(chan struct{})
	callsDone := make(chan struct{})
	go func() {
		s.drv.run(stopCalls)
		close(callsDone)
	}()
	stopFaults := make(chan struct{})
	faultsDone := make(chan struct{})
	go func() {
		s.faultLoop(ctx, end, stopFaults)
		close(faultsDone)
	}()

	tick := time.NewTicker(s.o.reportEvery)
	defer tick.Stop()
	endTimer := time.NewTimer(s.o.duration)
	defer endTimer.Stop()
	period := 0
	from := s.loadStart
wait:
	for {
		select {
		case <-ctx.Done():
			interrupted = true
			break wait
		case now := <-tick.C:
			period++
			s.periodReport(period, from, now)
			from = now
		case <-endTimer.C:
			break wait
		}
	}
	// The fault loop starts no fault after the end; one in progress is
	// completed (its agent restored and recovered) before the calls stop.
	close(stopFaults)
	<-faultsDone
	close(stopCalls)
	<-callsDone
	s.loadEnd = time.Now()
	if ctx.Err() != nil {
		interrupted = true
	}
	if s.loadEnd.Sub(from) >= s.o.reportEvery/10 {
		s.periodReport(period+1, from, s.loadEnd)
	}
	return interrupted
}

// faultLoop applies planned faults one at a time until the next one would
// not leave time for recovery before end, stop is closed or ctx ends.
func (s *soak) faultLoop(ctx context.Context, end time.Time, stop <-chan struct{}) {
	p := newPlanner(s.o.seed, s.o.faultEvery, s.o.hbTimeout, s.o.agents)
	for {
		f := p.next()
		if time.Now().Add(f.wait + maxFaultSpan(s.o.hbTimeout)).After(end) {
			return
		}
		t := time.NewTimer(f.wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-stop:
			t.Stop()
			return
		case <-t.C:
		}
		s.apply(ctx, f)
	}
}

// apply applies fault f and waits for the agent's recovery. ctx ends only
// on interruption, which cuts the fault short (every process is killed
// next).
func (s *soak) apply(ctx context.Context, f faultPlan) {
	s.mu.Lock()
	p := s.agents[f.agent]
	rec := &faultRecord{plan: f, name: p.Name, pid: p.PID, exitCode: -2}
	s.faults = append(s.faults, rec)
	s.mu.Unlock()
	fail := func(format string, args ...any) {
		s.mu.Lock()
		rec.failure = fmt.Sprintf(format, args...)
		rec.done = true
		s.mu.Unlock()
		fmt.Fprintf(s.diag, "%s %s %s: %s\n", offset(s.loadStart, time.Now()), f.kind, p.Name, rec.failure)
	}
	fmt.Fprintf(s.diag, "%s %s %s (pid %d)\n", offset(s.loadStart, time.Now()), f.kind, p.Name, p.PID)

	var resumed time.Time
	id := instanceID(p.Name)
	calls := p.calls
	switch f.kind {
	case faultStop:
		s.mu.Lock()
		rec.at = time.Now()
		s.mu.Unlock()
		if err := p.Signal(syscall.SIGSTOP); err != nil {
			fail("%v", err)
			return
		}
		sleepCtx(ctx, f.hold)
		if err := p.Signal(syscall.SIGCONT); err != nil {
			fail("%v", err)
			return
		}
		resumed = time.Now()
	default:
		np, err := s.restart(ctx, f, p, rec)
		if err != nil {
			fail("%v", err)
			return
		}
		resumed, calls = np.started, np.calls
	}
	s.mu.Lock()
	rec.resumed = resumed
	s.mu.Unlock()

	// Recovered: the client routes to the instance at its call address
	// and the instance has answered a call since it was resumed.
	for {
		if s.routable(id, calls) && s.drv.answeredSince(id, resumed) {
			s.mu.Lock()
			rec.recovered, rec.done = time.Since(resumed), true
			if f.kind.restarts() {
				np := s.agents[f.agent]
				np.startStat = readProcStat(np.PID, -1)
			}
			s.mu.Unlock()
			return
		}
		if time.Since(resumed) > recoverLimit {
			fail("not routed to and answering within %v of being resumed", recoverLimit)
			return
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			fail("the soak ended before it recovered")
			return
		}
	}
}

// restart ends p as f says (SIGKILL or SIGTERM), waits f.hold and starts a
// new process under its name, on its old ports or new ones.
func (s *soak) restart(ctx context.Context, f faultPlan, p *agentProc, rec *faultRecord) (*agentProc, error) {
	sig := syscall.SIGKILL
	if f.kind == faultTerm {
		sig = syscall.SIGTERM
	}
	s.mu.Lock()
	p.endStat = readProcStat(p.PID, -1)
	p.endedBy = f.kind.String()
	p.ended = time.Now()
	rec.at = p.ended
	s.mu.Unlock()
	if err := p.Signal(sig); err != nil {
		return nil, err
	}
	exited := p.Wait(exitLimit)
	if !exited {
		p.kill()
	}
	s.mu.Lock()
	rec.exitAfter = time.Since(rec.at)
	if !p.Alive() {
		rec.exitCode = p.ExitCode()
	}
	if !exited {
		rec.failure = fmt.Sprintf("did not exit within %v of %v; killed", exitLimit, f.kind)
	}
	s.mu.Unlock()
	if p.Alive() {
		return nil, fmt.Errorf("%s (pid %d) did not exit even after SIGKILL", p.Name, p.PID)
	}
	if !sleepCtx(ctx, f.hold) {
		return nil, ctx.Err()
	}

	bind, callBind, ports := "127.0.0.1:0", "", "new ports"
	if !f.newPorts {
		bind, callBind, ports = p.gossip, p.calls, "the same ports"
	}
	np, err := startAgent(ctx, &s.set, p.Name, p.life+1, bind, callBind, s.seeds(f.agent))
	if err != nil && !f.newPorts && ctx.Err() == nil {
		// Another process took one of the old ports meanwhile.
		np, err = startAgent(ctx, &s.set, p.Name, p.life+2, "127.0.0.1:0", "", s.seeds(f.agent))
		ports = fmt.Sprintf("new ports (the old ones were taken: %v)", firstLine(err))
	}
	if err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	if f.newPorts && np.gossip == p.gossip {
		ports = "new ports requested, the same gossip port given"
	}
	s.mu.Lock()
	s.agents[f.agent] = np
	s.history = append(s.history, np)
	rec.newPid, rec.ports = np.PID, ports
	s.mu.Unlock()
	return np, nil
}

// routable reports whether the client would route a call to instance id
// at call address addr.
func (s *soak) routable(id, addr string) bool {
	return slices.ContainsFunc(s.client.HealthyInstances(serviceName), func(in aegis.Instance) bool {
		return in.ID == id && in.Addr == addr
	})
}

// probe calls each agent's instance once, excluding all others, and
// returns per instance the handler runs its current process made before
// the probe (the count it answers, less the probe's own run). An instance
// that cannot be probed within probeLimit is left out.
func (s *soak) probe(ctx context.Context) map[string]int64 {
	s.mu.Lock()
	ids := make([]string, len(s.agents))
	for i, p := range s.agents {
		ids[i] = instanceID(p.Name)
	}
	s.mu.Unlock()
	out := map[string]int64{}
	for _, id := range ids {
		others := slices.DeleteFunc(slices.Clone(ids), func(o string) bool { return o == id })
		start := time.Now()
		for {
			cctx, cancel := context.WithTimeout(ctx, s.o.callTimeout)
			ans, err := s.client.Call(cctx, serviceName, countMethod, nil, aegis.WithExclude(others...))
			cancel()
			var a countAnswer
			if err == nil && json.Unmarshal(ans, &a) == nil && a.Instance == id && a.Count > 0 {
				out[id] = a.Count - 1
				break
			}
			if time.Since(start) > probeLimit || !sleepCtx(ctx, 50*time.Millisecond) {
				fmt.Fprintf(s.diag, "final probe of %s failed: %v %s\n", id, err, ans)
				break
			}
		}
	}
	return out
}

// stopResult is how a process ended at the end of the soak.
type stopResult struct {
	graceful bool
	exitCode int
	took     time.Duration
}

// stopAll stops every running agent, all at once: gracefully (SIGTERM,
// SIGKILL after exitLimit) at a normal end, with SIGKILL when interrupted.
func (s *soak) stopAll(interrupted bool) map[*agentProc]stopResult {
	s.mu.Lock()
	procs := slices.Clone(s.agents)
	now := time.Now()
	for _, p := range procs {
		p.endedBy, p.ended = "SIGTERM at the end", now
		if interrupted {
			p.endedBy = "SIGKILL on interruption"
		}
	}
	s.mu.Unlock()
	var mu sync.Mutex
	out := map[*agentProc]stopResult{}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() {
			start := time.Now()
			r := stopResult{graceful: true}
			if interrupted {
				p.kill()
			} else {
				r.graceful = p.stop()
			}
			r.exitCode, r.took = p.ExitCode(), time.Since(start)
			mu.Lock()
			out[p] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// killAll kills, by PID, every process that is still running.
func (s *soak) killAll() {
	s.mu.Lock()
	procs := slices.Clone(s.history)
	s.mu.Unlock()
	for _, p := range procs {
		if p.Alive() {
			p.kill()
		}
	}
}

// spans returns, per instance, its processes for the delivery check, with
// the probed runs of the current ones.
func (s *soak) spans(probes map[string]int64) map[string][]processSpan {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]processSpan{}
	for _, p := range s.history {
		id := instanceID(p.Name)
		runs := int64(-1)
		if n, ok := probes[id]; ok && slices.Contains(s.agents, p) {
			runs = n
		}
		out[id] = append(out[id], processSpan{started: p.started, runs: runs})
	}
	return out
}

// eventLog keeps the client's events. Safe for concurrent use.
type eventLog struct {
	mu     sync.Mutex // guards events
	events []aegis.Event
}

// add is the client's subscriber: it only appends.
func (l *eventLog) add(e aegis.Event) {
	if e.Instance.Service != serviceName {
		return
	}
	e.Instance.Metadata = nil
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

// about returns the events about instance id between from and to.
func (l *eventLog) about(id string, from, to time.Time) []aegis.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []aegis.Event
	for _, e := range l.events {
		if e.Instance.ID == id && !e.Time.Before(from) && !e.Time.After(to) {
			out = append(out, e)
		}
	}
	return out
}

// counts returns how many events of each type and reason there were.
func (l *eventLog) counts() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for _, e := range l.events {
		out[e.Type.String()+" ("+e.Reason+")"]++
	}
	return out
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// firstLine returns the first line of err's text.
func firstLine(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	for i, c := range msg {
		if c == '\n' {
			return msg[:i]
		}
	}
	return msg
}
