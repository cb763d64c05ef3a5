//go:build linux

// This file runs the verdicts subcommand on Linux: the network namespace
// with packet loss on its loopback, the agent processes inside it, and the
// starvation of one of them (a busy loop with the victim reniced, a cgroup
// CPU limit, or SIGSTOP).

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/aegisipc/aegis/internal/agentproc"
)

// firstGossipPort is agent 0's gossip port; agent i uses the next ones.
const firstGossipPort = 7946

// agentStartLimit bounds how long an agent takes to log its startup line.
const agentStartLimit = 20 * time.Second

func runVerdicts(args []string) error {
	o, err := parseVerdicts(args, os.Stderr)
	if err != nil {
		return err
	}
	if why := verdictsSkip(o); why != "" {
		fmt.Fprintf(os.Stderr, "%s verdicts: skipped: %s\n", progName(), why)
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	tempLogs := o.logDir == ""
	if tempLogs {
		if o.logDir, err = os.MkdirTemp("", "aegis-verdicts-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(o.logDir, 0o755); err != nil {
		return err
	}
	if o.agentBin == "" {
		o.builtAgent = true
		progress("building the aegis command")
		if o.agentBin, err = agentproc.Build(ctx, o.logDir); err != nil {
			return err
		}
	}
	r, settings, err := verdictsRunAll(ctx, o)
	if err != nil {
		return fmt.Errorf("%w (logs are in %s)", err, o.logDir)
	}
	r.report(os.Stdout, settings)
	if !r.pass() {
		return fmt.Errorf("false node-failed verdicts or agents gone (logs are in %s)", o.logDir)
	}
	if tempLogs {
		_ = os.RemoveAll(o.logDir)
	}
	return nil
}

// verdictsSkip says why the subcommand cannot run here, or "".
func verdictsSkip(o *verdictsOptions) string {
	if os.Geteuid() != 0 {
		return "network namespaces, tc and cgroups need root (run it as root)"
	}
	for _, c := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(c); err != nil {
			return "the " + c + " command (Debian package iproute2) is not installed"
		}
	}
	return ""
}

// verdictsLab is one run's namespace and processes.
type verdictsLab struct {
	o      *verdictsOptions
	ns     string
	agents []*agentproc.Proc
	t      *tracker
}

// verdictsRunAll makes the namespace, starts the agents, runs the loss and
// the starvation windows, and tears everything down.
func verdictsRunAll(ctx context.Context, o *verdictsOptions) (*verdictsRun, []string, error) {
	lab := &verdictsLab{o: o, ns: fmt.Sprintf("aegis-verdicts-%d", os.Getpid()), t: newTracker()}
	r := &verdictsRun{opt: o, command: commandLine(), t: lab.t}
	settings := []string{
		"date: " + time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		"library: " + libraryVersion(),
		fmt.Sprintf("runtime: %s %s/%s, %d CPUs; agents are separate processes", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU()),
	}
	agent := "built from this module"
	if !o.builtAgent {
		agent = "given by -agent (the profile below is this aegis-bench's, which that binary may not share)"
	}
	settings = append(settings, fmt.Sprintf("gossip -%s (agent binary %s): %s", o.gossip, agent, gossipString(profileByName(o.gossip))))
	if err := runCmd("ip", "netns", "add", lab.ns); err != nil {
		return nil, nil, err
	}
	defer func() {
		if err := runCmd("ip", "netns", "del", lab.ns); err != nil {
			progress("%v", err)
		}
	}()
	if err := runCmd("ip", "-n", lab.ns, "link", "set", "lo", "up"); err != nil {
		return nil, nil, err
	}
	defer lab.stopAgents()
	if err := lab.startAgents(ctx); err != nil {
		return nil, nil, err
	}
	names := make([]string, o.n)
	for i := range names {
		names[i] = agentName(i)
	}
	progress("waiting until every agent sees all %d", o.n)
	deadline := time.Now().Add(o.converge)
	for {
		ok, why := lab.t.converged(names)
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("not converged within %v: %s", o.converge, why)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return nil, nil, err
		}
	}

	victim := lab.agents[o.victim]
	st, err := newStarver(o, victim.PID)
	if err != nil {
		return nil, nil, err
	}
	defer st.close()
	r.starveNote = st.note

	removeLoss, method, err := addLoopbackLoss(lab.ns, o.loss)
	if err != nil {
		return nil, nil, err
	}
	r.lossMethod = method
	r.started = time.Now()
	cpu0 := make([]time.Duration, o.n)
	for i, a := range lab.agents {
		cpu0[i] = procCPU(a.PID)
	}
	progress("loss on: %s; %s", method, o.starveDescription())

	for k, off := range o.windows() {
		if err := sleepUntil(ctx, r.started.Add(off)); err != nil {
			break
		}
		w := starveWindow{start: time.Now()}
		c0 := procCPU(victim.PID)
		if err := st.begin(); err != nil {
			w.err = err.Error()
		}
		_ = sleepCtx(ctx, o.starveFor)
		if err := st.end(); err != nil && w.err == "" {
			w.err = err.Error()
		}
		w.end = time.Now()
		w.victimCPU = procCPU(victim.PID) - c0
		w.throttled = st.throttled()
		r.windows = append(r.windows, w)
		lab.t.mu.Lock()
		reports := count(lab.t.failed, r.started, time.Now().Add(time.Hour), "")
		lab.t.mu.Unlock()
		progress("window %d: %s used %v of CPU; node-failed reports so far: %d", k+1, agentName(o.victim), w.victimCPU, reports)
		if ctx.Err() != nil {
			break
		}
	}
	_ = sleepUntil(ctx, r.started.Add(o.duration+o.grace))
	r.ended = time.Now()
	for i, a := range lab.agents {
		if a.Alive() {
			r.agentsAlive++
		}
		c := procCPU(a.PID) - cpu0[i]
		r.cpu = append(r.cpu, c)
		if i == o.victim {
			r.victimCPU = c
		}
	}
	r.lossSent, r.lossDropped = removeLoss()
	if ctx.Err() != nil {
		return nil, nil, fmt.Errorf("interrupted")
	}
	return r, settings, nil
}

// startAgents starts the agents in the namespace, agent 0 first, each
// other one joining it.
func (l *verdictsLab) startAgents(ctx context.Context) error {
	seed := fmt.Sprintf("127.0.0.1:%d", firstGossipPort)
	for i := range l.o.n {
		name := agentName(i)
		args := []string{"netns", "exec", l.ns, l.o.agentBin, "agent", "-name", name,
			"-bind", fmt.Sprintf("127.0.0.1:%d", firstGossipPort+i), "-gossip", l.o.gossip, "-serve", "echo",
			"-heartbeat-interval", l.o.hbInterval.String(), "-heartbeat-timeout", l.o.hbTimeout.String(),
			"-log-format", "json", "-join-timeout", "30s"}
		if i > 0 {
			args = append(args, "-join", seed)
		}
		f, err := os.Create(filepath.Join(l.o.logDir, name+".log"))
		if err != nil {
			return err
		}
		log := agentproc.NewTailLog(50, func(ln agentproc.Line) { l.t.line(name, ln) })
		cmd := exec.Command("ip", args...)
		cmd.Stdout = io.MultiWriter(f, log)
		cmd.Stderr = cmd.Stdout
		p, err := agentproc.Start(name, cmd)
		if err != nil {
			_ = f.Close()
			return err
		}
		go func() { <-p.Exited(); _ = f.Close() }()
		l.agents = append(l.agents, p)
		if _, _, err := agentproc.WaitStarted(ctx, p, log, agentStartLimit); err != nil {
			return err
		}
	}
	return nil
}

// stopAgents ends every agent: SIGTERM (a graceful leave), SIGKILL after
// 10 s.
func (l *verdictsLab) stopAgents() {
	for _, p := range l.agents {
		_ = p.Signal(syscall.SIGCONT)
		_ = p.Signal(syscall.SIGTERM)
	}
	for _, p := range l.agents {
		if !p.Wait(10 * time.Second) {
			p.Kill(5 * time.Second)
		}
	}
}

// runCmd runs a command and returns its error with its output.
func runCmd(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// lossBPF is a classic BPF program for tc's bpf classifier: it matches a
// packet (returns -1, "use the filter's classid") when a random 32-bit
// number is below the threshold in its second instruction.
const lossBPF = "4,32 0 0 4294963256,53 1 0 %d,6 0 0 4294967295,6 0 0 0"

// addLoopbackLoss drops share of the packets sent on the namespace's
// loopback (each packet crosses it once): netem where the kernel has it,
// else an htb qdisc whose second class holds a pfifo of length 0 and a
// random BPF filter into that class. The sender is not told. remove takes
// the loss away and returns the packets the qdisc sent and dropped.
func addLoopbackLoss(ns string, share float64) (remove func() (sent, dropped int), method string, err error) {
	pct := strconv.FormatFloat(100*share, 'f', -1, 64) + "%"
	remove = func() (int, int) {
		out, _ := exec.Command("tc", "-s", "-n", ns, "qdisc", "show", "dev", "lo").CombinedOutput()
		if err := runCmd("tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"); err != nil {
			progress("%v", err)
		}
		return qdiscCounts(string(out))
	}
	if share == 0 {
		return func() (int, int) { return 0, 0 }, "nothing (no loss)", nil
	}
	out, err := exec.Command("tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "loss", pct).CombinedOutput()
	if err == nil {
		return remove, "tc qdisc add dev lo root netem loss " + pct, nil
	}
	if !strings.Contains(string(out), "unknown") {
		return nil, "", fmt.Errorf("tc netem: %v: %s", err, strings.TrimSpace(string(out)))
	}
	threshold := uint64(share * (1 << 32))
	for _, args := range [][]string{
		{"qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1"},
		{"class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit", "quantum", "60000"},
		{"class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb", "rate", "10gbit", "quantum", "60000"},
		{"qdisc", "add", "dev", "lo", "parent", "1:2", "handle", "20:", "pfifo", "limit", "0"},
		{"filter", "add", "dev", "lo", "parent", "1:", "protocol", "all", "prio", "1", "bpf",
			"bytecode", fmt.Sprintf(lossBPF, threshold), "classid", "1:2"},
	} {
		if err := runCmd("tc", append([]string{"-n", ns}, args...)...); err != nil {
			_ = runCmd("tc", "-n", ns, "qdisc", "del", "dev", "lo", "root")
			return nil, "", err
		}
	}
	return remove, "a random classic BPF tc filter into a zero-length pfifo on lo (this kernel has no netem), " + pct, nil
}

// qdiscCounts returns the packets sent and dropped by the first (root)
// qdisc in the output of tc -s qdisc show.
func qdiscCounts(out string) (sent, dropped int) {
	m := regexp.MustCompile(`Sent \d+ bytes (\d+) pkt \(dropped (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, 0
	}
	sent, _ = strconv.Atoi(m[1])
	dropped, _ = strconv.Atoi(m[2])
	return sent, dropped
}

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// procCPU returns the CPU time process pid has used (user and system, all
// threads, 10 ms resolution), or 0.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: fields count from
	// after its closing parenthesis (field 3, state).
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * clockTick
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sleepUntil(ctx context.Context, at time.Time) error { return sleepCtx(ctx, time.Until(at)) }

// starver starves the victim during a window.
type starver struct {
	o     *verdictsOptions
	pid   int
	note  string
	hog   *agentproc.Proc // busy: the busy loop of the current window
	cg    *cgroup         // cpumax
	stat0 map[string]int64
}

func newStarver(o *verdictsOptions, pid int) (*starver, error) {
	s := &starver{o: o, pid: pid}
	switch o.starve {
	case "cpumax":
		cg, err := newCgroup(fmt.Sprintf("aegis-verdicts-%d", os.Getpid()), pid)
		if err != nil {
			return nil, err
		}
		s.cg = cg
		s.note = "cgroup " + cg.describe()
	case "busy":
		s.note = fmt.Sprintf("the busy loop: %d threads", runtime.NumCPU())
	}
	return s, nil
}

// begin starts a window.
func (s *starver) begin() error {
	switch s.o.starve {
	case "busy":
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), hogEnv+"="+strconv.Itoa(runtime.NumCPU()))
		if s.hog, err = agentproc.Start("busy loop", cmd); err != nil {
			return err
		}
		switch {
		case s.o.idle:
			return setScheduler(s.pid, schedIdle)
		case s.o.nice > 0:
			return renice(s.pid, s.o.nice)
		}
	case "cpumax":
		s.stat0 = s.cg.stat()
		return s.cg.limit(s.o.cpuQuota, s.o.cpuPeriod)
	case "stop":
		return syscall.Kill(s.pid, syscall.SIGSTOP)
	}
	return nil
}

// end ends a window.
func (s *starver) end() error {
	switch s.o.starve {
	case "busy":
		var err error
		switch {
		case s.o.idle:
			err = setScheduler(s.pid, schedOther)
		case s.o.nice > 0:
			err = renice(s.pid, 0)
		}
		if s.hog != nil {
			s.hog.Kill(5 * time.Second)
			s.hog = nil
		}
		return err
	case "cpumax":
		return s.cg.unlimit(s.o.cpuPeriod)
	case "stop":
		return syscall.Kill(s.pid, syscall.SIGCONT)
	}
	return nil
}

// throttled describes the cgroup's throttling since the window began.
func (s *starver) throttled() string {
	if s.cg == nil {
		return ""
	}
	now := s.cg.stat()
	periods, n := now["nr_periods"]-s.stat0["nr_periods"], now["nr_throttled"]-s.stat0["nr_throttled"]
	ns := now["throttled_time"] - s.stat0["throttled_time"] // v1, ns
	if v, ok := now["throttled_usec"]; ok {                 // v2
		ns = (v - s.stat0["throttled_usec"]) * 1000
	}
	return fmt.Sprintf("%d of %d periods, %.0f ms", n, periods, float64(ns)/1e6)
}

// close ends a window in progress and removes the cgroup.
func (s *starver) close() {
	_ = s.end()
	if s.cg != nil {
		s.cg.remove()
	}
}

// renice sets the nice value of every thread of process pid (nice is per
// thread on Linux; threads made later inherit their creator's).
func renice(pid, nice int) error {
	return eachThread(pid, func(tid int) error {
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil {
			return fmt.Errorf("setpriority %d: %w", tid, err)
		}
		return nil
	})
}

// eachThread calls f for every thread of process pid and joins the errors
// it returns, leaving out threads that ended meanwhile (ESRCH).
func eachThread(pid int, f func(tid int) error) error {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := f(tid); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Scheduling policies (linux/sched.h).
const (
	schedOther = 0
	schedIdle  = 5
)

// setScheduler sets the scheduling policy of every thread of process pid
// (threads made later inherit their creator's).
func setScheduler(pid, policy int) error {
	return eachThread(pid, func(tid int) error {
		var param struct{ priority int32 }
		if _, _, e := syscall.Syscall(syscall.SYS_SCHED_SETSCHEDULER, uintptr(tid), uintptr(policy), uintptr(unsafe.Pointer(&param))); e != 0 {
			return fmt.Errorf("sched_setscheduler %d: %w", tid, e)
		}
		return nil
	})
}

// cgroup is a cgroup of the cpu controller holding the victim: v2 where
// the cpu controller is on the unified hierarchy, v1 otherwise.
type cgroup struct {
	dir    string
	parent string
	v2     bool
	pid    int
}

// newCgroup makes cgroup name beside the one this process is in and moves
// pid into it.
func newCgroup(name string, pid int) (*cgroup, error) {
	v2root, v1root := cgroupMounts()
	own := ownCgroups()
	var c *cgroup
	switch {
	case v2root != "" && hasWord(readFile(filepath.Join(v2root, "cgroup.controllers")), "cpu"):
		parent := filepath.Join(v2root, own[""])
		if err := os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+cpu"), 0); err != nil {
			return nil, fmt.Errorf("cgroup v2: enable the cpu controller in %s: %w", parent, err)
		}
		c = &cgroup{dir: filepath.Join(parent, name), parent: parent, v2: true, pid: pid}
	case v1root != "":
		parent := filepath.Join(v1root, own["cpu"])
		c = &cgroup{dir: filepath.Join(parent, name), parent: parent, pid: pid}
	default:
		return nil, errors.New("no cgroup hierarchy with the cpu controller is mounted")
	}
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		_ = os.Remove(c.dir)
		return nil, fmt.Errorf("cgroup: move %d into %s: %w", pid, c.dir, err)
	}
	return c, nil
}

func (c *cgroup) describe() string {
	if c.v2 {
		return c.dir + " (v2, cpu.max)"
	}
	return c.dir + " (v1, cpu.cfs_quota_us and cpu.cfs_period_us)"
}

// limit lets the cgroup use quota of CPU per period.
func (c *cgroup) limit(quota, period time.Duration) error {
	if c.v2 {
		return c.write("cpu.max", fmt.Sprintf("%d %d", quota.Microseconds(), period.Microseconds()))
	}
	if err := c.write("cpu.cfs_period_us", strconv.FormatInt(period.Microseconds(), 10)); err != nil {
		return err
	}
	return c.write("cpu.cfs_quota_us", strconv.FormatInt(quota.Microseconds(), 10))
}

// unlimit lifts the limit.
func (c *cgroup) unlimit(period time.Duration) error {
	if c.v2 {
		return c.write("cpu.max", fmt.Sprintf("max %d", period.Microseconds()))
	}
	return c.write("cpu.cfs_quota_us", "-1")
}

func (c *cgroup) write(file, val string) error {
	if err := os.WriteFile(filepath.Join(c.dir, file), []byte(val), 0); err != nil {
		return fmt.Errorf("cgroup: write %q to %s: %w", val, file, err)
	}
	return nil
}

// stat reads the cgroup's cpu.stat.
func (c *cgroup) stat() map[string]int64 {
	out := map[string]int64{}
	for line := range strings.Lines(readFile(filepath.Join(c.dir, "cpu.stat"))) {
		f := strings.Fields(line)
		if len(f) == 2 {
			out[f[0]], _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return out
}

// remove moves the victim back to the parent cgroup, if it still runs,
// and removes the cgroup.
func (c *cgroup) remove() {
	_ = c.unlimit(100 * time.Millisecond)
	_ = os.WriteFile(filepath.Join(c.parent, "cgroup.procs"), []byte(strconv.Itoa(c.pid)), 0)
	for range 50 {
		if err := os.Remove(c.dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	progress("cgroup %s could not be removed", c.dir)
}

// cgroupMounts returns the mount points of the cgroup v2 hierarchy and of
// the v1 hierarchy holding the cpu controller ("" when absent).
func cgroupMounts() (v2, v1cpu string) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := strings.Fields(sc.Text())
		if len(m) < 4 {
			continue
		}
		switch {
		case m[2] == "cgroup2" && v2 == "":
			v2 = m[1]
		case m[2] == "cgroup" && slices.Contains(strings.Split(m[3], ","), "cpu"):
			v1cpu = m[1]
		}
	}
	return v2, v1cpu
}

// ownCgroups returns this process's cgroup paths by v1 controller, and
// the v2 one under "".
func ownCgroups() map[string]string {
	out := map[string]string{}
	for line := range strings.Lines(readFile("/proc/self/cgroup")) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
		}
		for c := range strings.SplitSeq(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func hasWord(s, w string) bool { return slices.Contains(strings.Fields(s), w) }
