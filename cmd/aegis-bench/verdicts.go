// This file holds the verdicts subcommand's options, the reading of the
// agents' logs (which node-failed verdicts, suspicions and unhealthy
// instances they report) and its report. Running the agents in a network
// namespace and starving one of them is Linux-only (verdicts_linux.go).

package main

import (
	"flag"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/agentproc"
)

const verdictsUsage = `usage: aegis-bench verdicts [flags]

Counts false node-failed verdicts. It starts -n aegis agent processes
(aegis agent -gossip PROFILE -serve echo, built from this module unless
-agent is given) inside a network namespace of its own, on that
namespace's loopback (127.0.0.1, gossip ports 7946 and up), waits until
every agent sees every other and every instance, then drops -loss of the
packets on that loopback (tc netem loss, or where the kernel has no netem
a random BPF filter into a zero-length pfifo) for -duration. Meanwhile one
agent (-victim) is starved of CPU for -starve-for every -starve-every
(the first time at -starve-every/2), by -starve:

  busy    a child process with one spinning thread per CPU runs for the
          window, at nice 0, and the victim's threads are set to nice
          -nice (19 by default; 0 keeps the victim at the loop's priority,
          so that every agent only competes with the loop), or with -idle
          to the SCHED_IDLE class
  cpumax  the victim's cgroup (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us
          where the cpu controller is on v1) is limited to -cpu-quota per
          -cpu-period for the window
  stop    SIGSTOP for the window, then SIGCONT (a freeze: no profile can
          tell it from a crash once it outlasts the suspicion timeout)
  none    loss only

No agent ever fails or leaves during the run (checked: every process must
still run at the end), so every node-failed verdict any agent logs is a
false one. The report lists them with the suspicions behind them, per
starvation window, and ends with PASS (none) or FAIL; the exit status is
then 0 or 1. Needs Linux, root, and the ip and tc commands (iproute2);
without them it prints why it skipped and exits with status 0. The
namespace, cgroup and every process are removed at the end. Logs of every
agent go to -log-dir (a temporary directory, removed after a PASS, unless
given).

Flags:
`

// starveMethods are the values of -starve.
var starveMethods = []string{"busy", "cpumax", "stop", "none"}

// verdictsOptions are the verdicts subcommand's flags.
type verdictsOptions struct {
	n           int
	duration    time.Duration
	loss        float64
	gossip      string
	starve      string
	starveEvery time.Duration
	starveFor   time.Duration
	nice        int
	idle        bool
	cpuQuota    time.Duration
	cpuPeriod   time.Duration
	victim      int
	grace       time.Duration
	converge    time.Duration
	hbInterval  time.Duration
	hbTimeout   time.Duration
	agentBin    string
	logDir      string
	builtAgent  bool // agentBin was built from this module by the run
}

// parseVerdicts parses the verdicts subcommand's flags.
func parseVerdicts(args []string, output io.Writer) (*verdictsOptions, error) {
	o := &verdictsOptions{}
	fs := flag.NewFlagSet("verdicts", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), verdictsUsage)
		fs.PrintDefaults()
	}
	fs.IntVar(&o.n, "n", 20, "agent processes")
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the loss and the starvation windows last")
	fs.Float64Var(&o.loss, "loss", 0.1, "share of the packets dropped on the namespace's loopback")
	fs.StringVar(&o.gossip, "gossip", "fast", "the agents' -gossip profile: lan, fast or local")
	fs.StringVar(&o.starve, "starve", "busy", "how the victim is starved: "+strings.Join(starveMethods, ", "))
	fs.DurationVar(&o.starveEvery, "starve-every", 30*time.Second, "period of the starvation windows")
	fs.DurationVar(&o.starveFor, "starve-for", 5*time.Second, "length of each starvation window")
	fs.IntVar(&o.nice, "nice", 19, "busy: nice value of the victim's threads during a window (0 to 19)")
	fs.BoolVar(&o.idle, "idle", false, "busy: put the victim's threads in the SCHED_IDLE class during a window instead of renicing them (weight 3 against the busy loop's 1024)")
	fs.DurationVar(&o.cpuQuota, "cpu-quota", time.Millisecond, "cpumax: CPU time the victim may use per -cpu-period during a window")
	fs.DurationVar(&o.cpuPeriod, "cpu-period", 100*time.Millisecond, "cpumax: the throttling period")
	fs.IntVar(&o.victim, "victim", -1, "index of the starved agent, 0 to n-1 (-1: the last; agent 0 is every agent's seed)")
	fs.DurationVar(&o.grace, "grace", 15*time.Second, "observation time after -duration, with the loss still on and no starvation, for late verdicts")
	fs.DurationVar(&o.converge, "cap", 60*time.Second, "give up when the agents have not all seen each other within this long")
	fs.DurationVar(&o.hbInterval, "heartbeat-interval", 5*time.Second, "the agents' -heartbeat-interval")
	fs.DurationVar(&o.hbTimeout, "heartbeat-timeout", 30*time.Second, "the agents' -heartbeat-timeout")
	fs.StringVar(&o.agentBin, "agent", "", "aegis binary `path` (default: go build ./cmd/aegis of this module)")
	fs.StringVar(&o.logDir, "log-dir", "", "`directory` for the agents' logs (default: a temporary one, removed after a PASS)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.victim < 0 {
		o.victim = o.n - 1
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q (flags only)", fs.Arg(0))
	case o.n < 3:
		return nil, fmt.Errorf("-n must be at least 3, got %d", o.n)
	case o.duration <= 0 || o.grace < 0 || o.converge <= 0:
		return nil, fmt.Errorf("-duration and -cap must be positive and -grace not negative")
	case o.loss < 0 || o.loss >= 1:
		return nil, fmt.Errorf("-loss must be in [0, 1), got %v", o.loss)
	case o.gossip != "lan" && o.gossip != "fast" && o.gossip != "local":
		return nil, fmt.Errorf("-gossip must be lan, fast or local, got %q", o.gossip)
	case !slices.Contains(starveMethods, o.starve):
		return nil, fmt.Errorf("-starve must be one of %s, got %q", strings.Join(starveMethods, ", "), o.starve)
	case o.starve != "none" && (o.starveFor <= 0 || o.starveEvery <= o.starveFor):
		return nil, fmt.Errorf("-starve-for must be positive and shorter than -starve-every")
	case o.nice < 0 || o.nice > 19:
		return nil, fmt.Errorf("-nice must be in 0..19, got %d", o.nice)
	case o.cpuQuota < time.Millisecond || o.cpuPeriod < time.Millisecond || o.cpuPeriod > time.Second:
		return nil, fmt.Errorf("-cpu-quota must be at least 1ms and -cpu-period in 1ms..1s")
	case o.victim >= o.n:
		return nil, fmt.Errorf("-victim must be below -n (%d), got %d", o.n, o.victim)
	case o.hbInterval <= 0 || o.hbTimeout < 2*o.hbInterval:
		return nil, fmt.Errorf("-heartbeat-timeout must be at least twice a positive -heartbeat-interval")
	}
	return o, nil
}

// windows returns the starvation windows' offsets from the start of the
// loss: the first at starveEvery/2, then every starveEvery, each ending
// within duration.
func (o *verdictsOptions) windows() []time.Duration {
	if o.starve == "none" {
		return nil
	}
	var out []time.Duration
	for at := o.starveEvery / 2; at+o.starveFor <= o.duration; at += o.starveEvery {
		out = append(out, at)
	}
	return out
}

// niceWeight is the CFS weight of each nice value from 0 to 19 (the
// kernel's sched_prio_to_weight).
var niceWeight = [20]int{1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15}

// profileByName returns the gossip profile the agent's -gossip names.
func profileByName(name string) aegis.GossipConfig {
	switch name {
	case "fast":
		return aegis.FastLANGossip()
	case "local":
		return aegis.LocalGossip()
	}
	return aegis.LANGossip()
}

// agentName is the name of agent i.
func agentName(i int) string { return fmt.Sprintf("a%02d", i) }

// starveDescription says what a window does to the victim.
func (o *verdictsOptions) starveDescription() string {
	v := agentName(o.victim)
	switch o.starve {
	case "busy":
		s := fmt.Sprintf("a child process with one busy-looping thread per CPU, at nice 0, for %v every %v", o.starveFor, o.starveEvery)
		switch {
		case o.idle:
			s += fmt.Sprintf(", and %s's threads in the SCHED_IDLE class meanwhile (weight 3 against the busy loop's 1024: about 0.3%% of a CPU while the loop runs)", v)
		case o.nice > 0:
			s += fmt.Sprintf(", and %s's threads at nice %d meanwhile (weight %d against the busy loop's 1024)", v, o.nice, niceWeight[o.nice])
		default:
			s += fmt.Sprintf(" (%s keeps nice 0: it and every other agent compete with the busy loop at equal weight)", v)
		}
		return s
	case "cpumax":
		return fmt.Sprintf("%s's cgroup limited to %v of CPU per %v (%.1f%% of one CPU) for %v every %v", v, o.cpuQuota, o.cpuPeriod,
			100*float64(o.cpuQuota)/float64(o.cpuPeriod), o.starveFor, o.starveEvery)
	case "stop":
		return fmt.Sprintf("%s stopped (SIGSTOP) for %v every %v, then SIGCONT", v, o.starveFor, o.starveEvery)
	}
	return "none"
}

// Messages the agents log (cmd/aegis agent, JSON), and memberlist's lines
// as the node relays them.
const (
	msgNodeJoined = "node joined"
	msgNodeFailed = "node failed"
	msgNodeLeft   = "node left"
)

var (
	reMarking = regexp.MustCompile(`^memberlist: Marking (\S+) as failed, suspect timeout reached \((\d+) peer confirmations\)`)
	reSuspect = regexp.MustCompile(`^memberlist: Suspect (\S+) has failed, no acks received`)
)

// nodeVerdict is one agent's report that another node failed, or a
// memberlist declaration or suspicion behind such reports.
type nodeVerdict struct {
	at       time.Time
	observer string // the agent that logged it
	subject  string // the node it is about
	confirms int    // declarations: peer confirmations
}

// instVerdict is one agent's report that an instance turned unhealthy.
type instVerdict struct {
	at                 time.Time
	observer, instance string
	reason             string
}

// tracker reads every agent's log lines and keeps what the report needs.
// Safe for concurrent use.
type tracker struct {
	mu           sync.Mutex
	peers        map[string]map[string]bool // observer → peers it sees alive
	instances    map[string]map[string]bool // observer → instances it knows
	failed       []nodeVerdict              // "node failed"
	declarations []nodeVerdict              // memberlist: Marking X as failed
	suspicions   []nodeVerdict              // memberlist: Suspect X has failed
	unhealthy    []instVerdict
	lefts        []nodeVerdict
	warnings     []logged // WARN and ERROR lines
}

// logged is one warning or error line: its level and message with every
// number replaced by N.
type logged struct {
	at  time.Time
	msg string
}

func newTracker() *tracker {
	return &tracker{peers: map[string]map[string]bool{}, instances: map[string]map[string]bool{}}
}

// lineTime is when the agent logged ln (its own timestamp), or when it
// was read.
func lineTime(ln agentproc.Line) time.Time {
	if t := ln.Time(); !t.IsZero() {
		return t
	}
	return ln.At
}

// line takes one line agent observer logged.
func (t *tracker) line(observer string, ln agentproc.Line) {
	msg := ln.Str("msg")
	if msg == "" {
		return
	}
	at := lineTime(ln)
	t.mu.Lock()
	defer t.mu.Unlock()
	if lv := ln.Str("level"); lv == "WARN" || lv == "ERROR" {
		t.warnings = append(t.warnings, logged{at, lv + " " + digits.ReplaceAllString(msg, "N")})
	}
	set := func(m map[string]map[string]bool, key string, val bool) {
		if m[observer] == nil {
			m[observer] = map[string]bool{}
		}
		m[observer][key] = val
	}
	switch {
	case msg == msgNodeJoined:
		set(t.peers, ln.Str("peer"), true)
	case msg == msgNodeFailed:
		set(t.peers, ln.Str("peer"), false)
		t.failed = append(t.failed, nodeVerdict{at: at, observer: observer, subject: ln.Str("peer")})
	case msg == msgNodeLeft:
		set(t.peers, ln.Str("peer"), false)
		t.lefts = append(t.lefts, nodeVerdict{at: at, observer: observer, subject: ln.Str("peer")})
	case strings.HasPrefix(msg, "instance "):
		inst := ln.Str("service") + "/" + ln.Str("instance")
		switch ev, status := ln.Str("event"), ln.Str("status"); {
		case ev == "deregistered":
			set(t.instances, inst, false)
		default:
			set(t.instances, inst, true)
			if (ev == "registered" || ev == "status-changed") && status == "unhealthy" {
				t.unhealthy = append(t.unhealthy, instVerdict{at: at, observer: observer, instance: inst, reason: ln.Str("reason")})
			}
		}
	default:
		if m := reMarking.FindStringSubmatch(msg); m != nil {
			c, _ := strconv.Atoi(m[2])
			t.declarations = append(t.declarations, nodeVerdict{at: at, observer: observer, subject: m[1], confirms: c})
		} else if m := reSuspect.FindStringSubmatch(msg); m != nil {
			t.suspicions = append(t.suspicions, nodeVerdict{at: at, observer: observer, subject: m[1]})
		}
	}
}

// digits matches the numbers in a log message.
var digits = regexp.MustCompile(`[0-9]+`)

// converged reports whether each of names sees every other alive and
// knows n instances, and if not, the first one that does not.
func (t *tracker) converged(names []string) (bool, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range names {
		alive := 0
		for _, p := range names {
			if p != o && t.peers[o][p] {
				alive++
			}
		}
		known := 0
		for _, ok := range t.instances[o] {
			if ok {
				known++
			}
		}
		if alive < len(names)-1 || known < len(names) {
			return false, fmt.Sprintf("%s sees %d/%d peers and %d/%d instances", o, alive, len(names)-1, known, len(names))
		}
	}
	return true, ""
}

// verdictsRun is what one run measured, for the report.
type verdictsRun struct {
	opt         *verdictsOptions
	command     string
	started     time.Time // the loss started
	ended       time.Time // the observation ended
	lossMethod  string
	lossSent    int // packets through the loss qdisc
	lossDropped int
	starveNote  string // how the method was applied (cgroup path, ...)
	windows     []starveWindow
	agentsAlive int             // agent processes still running at the end
	cpu         []time.Duration // CPU each agent used from the loss start to the end
	victimCPU   time.Duration
	t           *tracker
}

// starveWindow is one starvation window as applied.
type starveWindow struct {
	start, end time.Time
	victimCPU  time.Duration // CPU the victim used during the window
	throttled  string        // cpumax: the cgroup's throttling during the window
	err        string        // applying or removing the starvation failed
}

// episode is the node-failed reports about one node that follow one
// another closely: one false verdict spreading through the cluster.
type episode struct {
	subject     string
	first, last time.Time
	observers   int
	declaredBy  []string // memberlist declarations behind it
	window      int      // the starvation window it began in or after (-1: before the first)
}

// episodeGap separates two episodes about one node.
const episodeGap = 10 * time.Second

// episodes groups the node-failed reports since from into episodes.
func (r *verdictsRun) episodes() []episode {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []episode
	open := map[string]int{} // subject → index in out
	seen := map[int]map[string]bool{}
	for _, v := range sortedByTime(t.failed) {
		if v.at.Before(r.started) || v.at.After(r.ended) {
			continue
		}
		i, ok := open[v.subject]
		if !ok || v.at.Sub(out[i].last) > episodeGap {
			out = append(out, episode{subject: v.subject, first: v.at, window: r.windowOf(v.at)})
			i = len(out) - 1
			open[v.subject] = i
			seen[i] = map[string]bool{}
		}
		out[i].last = v.at
		if !seen[i][v.observer] {
			seen[i][v.observer] = true
			out[i].observers++
		}
	}
	for _, d := range t.declarations {
		for i := range out {
			e := &out[i]
			if d.subject == e.subject && !d.at.Before(e.first.Add(-time.Second)) && !d.at.After(e.last) {
				e.declaredBy = append(e.declaredBy, fmt.Sprintf("%s (%d confirmations)", d.observer, d.confirms))
			}
		}
	}
	return out
}

func sortedByTime(v []nodeVerdict) []nodeVerdict {
	out := slices.Clone(v)
	slices.SortStableFunc(out, func(a, b nodeVerdict) int { return a.at.Compare(b.at) })
	return out
}

// windowOf returns the index of the last starvation window that began at
// or before at, or -1.
func (r *verdictsRun) windowOf(at time.Time) int {
	k := -1
	for i, w := range r.windows {
		if !w.start.After(at) {
			k = i
		}
	}
	return k
}

// count returns how many of v fall in [from, to) and are about subject
// (any subject when "").
func count(v []nodeVerdict, from, to time.Time, subject string) int {
	n := 0
	for _, x := range v {
		if !x.at.Before(from) && x.at.Before(to) && (subject == "" || x.subject == subject) {
			n++
		}
	}
	return n
}

// falseVerdicts returns the node-failed reports from the loss start on.
func (r *verdictsRun) falseVerdicts() int {
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	return count(r.t.failed, r.started, r.ended, "")
}

// pass reports whether no agent reported a node failed and every agent
// ran to the end.
func (r *verdictsRun) pass() bool {
	return r.falseVerdicts() == 0 && r.agentsAlive == r.opt.n
}

// topWarnings returns the k most frequent warning and error messages.
func (r *verdictsRun) topWarnings(k int) [][]string {
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	type kv struct {
		msg string
		n   int
	}
	counts := map[string]int{}
	for _, l := range r.t.warnings {
		if !l.at.Before(r.started) && !l.at.After(r.ended) {
			counts[l.msg]++
		}
	}
	var all []kv
	for m, n := range counts {
		all = append(all, kv{m, n})
	}
	slices.SortFunc(all, func(a, b kv) int {
		if a.n != b.n {
			return b.n - a.n
		}
		return strings.Compare(a.msg, b.msg)
	})
	var rows [][]string
	for _, x := range all[:min(k, len(all))] {
		rows = append(rows, []string{strings.ReplaceAll(x.msg, "|", "/"), strconv.Itoa(x.n)})
	}
	return rows
}

// since formats at as seconds since the loss started.
func (r *verdictsRun) since(at time.Time) string {
	return fmt.Sprintf("%.1f", at.Sub(r.started).Seconds())
}

// report writes the Markdown report.
func (r *verdictsRun) report(w io.Writer, settings []string) {
	o := r.opt
	victim := agentName(o.victim)
	fmt.Fprintf(w, "## aegis-bench verdicts\n\nSettings:\n\n")
	fmt.Fprintf(w, "- command: `%s`\n", r.command)
	for _, s := range settings {
		fmt.Fprintf(w, "- %s\n", s)
	}
	fmt.Fprintf(w, "- %d agent processes (aegis agent -gossip %s -serve echo -heartbeat-interval %v -heartbeat-timeout %v), a00 to a%02d, in a network namespace of their own on its loopback; each joins a00\n",
		o.n, o.gossip, o.hbInterval, o.hbTimeout, o.n-1)
	loss := fmt.Sprintf("%.0f%% of packets on the loopback, by %s", 100*o.loss, r.lossMethod)
	if r.lossSent+r.lossDropped > 0 {
		loss += fmt.Sprintf("; measured: %d of %d packets dropped (%.1f%%)", r.lossDropped, r.lossSent+r.lossDropped,
			100*float64(r.lossDropped)/float64(r.lossSent+r.lossDropped))
	}
	fmt.Fprintf(w, "- loss: %s, for %v after every agent saw every other, plus %v of observation after the last window\n", loss, o.duration, o.grace)
	fmt.Fprintf(w, "- starvation of %s: %s; %d windows", victim, o.starveDescription(), len(r.windows))
	if r.starveNote != "" {
		fmt.Fprintf(w, "; %s", r.starveNote)
	}
	fmt.Fprintf(w, "\n- no agent fails or leaves: every node-failed verdict is false; %d of %d agent processes ran to the end\n\n", r.agentsAlive, o.n)

	t := r.t
	t.mu.Lock()
	if len(r.windows) > 0 {
		var rows [][]string
		for i, w := range r.windows {
			next := r.ended
			if i+1 < len(r.windows) {
				next = r.windows[i+1].start
			}
			row := []string{strconv.Itoa(i + 1), r.since(w.start), fmt.Sprintf("%.0f", float64(w.victimCPU)/float64(time.Millisecond))}
			if o.starve == "cpumax" {
				row = append(row, w.throttled)
			}
			row = append(row,
				strconv.Itoa(count(t.suspicions, w.start, w.end, victim)), strconv.Itoa(count(t.suspicions, w.end, next, victim)),
				strconv.Itoa(count(t.suspicions, w.start, next, "")-count(t.suspicions, w.start, next, victim)),
				strconv.Itoa(count(t.failed, w.start, next, "")))
			if w.err != "" {
				row[len(row)-1] += " (" + w.err + ")"
			}
			rows = append(rows, row)
		}
		head := []string{"window", "start (s)", victim + " CPU in window (ms)"}
		if o.starve == "cpumax" {
			head = append(head, "throttled")
		}
		head = append(head, "suspicions of "+victim+" in window", "… after it", "suspicions of others", "node-failed reports")
		fmt.Fprintf(w, "Per starvation window (suspicions: memberlist's \"Suspect X has failed, no acks received\", a probe and its indirect probes unanswered; counted until the next window):\n\n")
		tableTo(w, head, rows)
	}
	before := count(t.failed, time.Time{}, r.started, "")
	susp := count(t.suspicions, r.started, r.ended, "")
	suspV := count(t.suspicions, r.started, r.ended, victim)
	failed := count(t.failed, r.started, r.ended, "")
	failedV := count(t.failed, r.started, r.ended, victim)
	decl := count(t.declarations, r.started, r.ended, "")
	reasons := map[string]int{}
	for _, u := range t.unhealthy {
		if !u.at.Before(r.started) && u.at.Before(r.ended) {
			reasons[u.reason]++
		}
	}
	lefts := count(t.lefts, r.started, r.ended, "")
	t.mu.Unlock()

	eps := r.episodes()
	if len(eps) > 0 {
		var rows [][]string
		for i, e := range eps {
			if i == 50 {
				rows = append(rows, []string{"…", fmt.Sprintf("%d more", len(eps)-50), "", "", "", ""})
				break
			}
			win := "before the first"
			if e.window >= 0 {
				win = fmt.Sprintf("%d (+%.1f s)", e.window+1, e.first.Sub(r.windows[e.window].start).Seconds())
			}
			rows = append(rows, []string{strconv.Itoa(i + 1), e.subject, r.since(e.first), win,
				fmt.Sprintf("%d/%d", e.observers, o.n-1), strings.Join(e.declaredBy, ", ")})
		}
		fmt.Fprintf(w, "False node-failed verdicts, grouped by node (reports about one node less than %v apart):\n\n", episodeGap)
		tableTo(w, []string{"#", "node", "first report (s)", "window (time after its start)", "agents reporting", "declared dead by"}, rows)
	}

	var cpu []time.Duration
	for i, c := range r.cpu {
		if i != o.victim {
			cpu = append(cpu, c)
		}
	}
	s := summarize(cpu)
	secs := r.ended.Sub(r.started).Seconds()
	perSec := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)/secs) }
	fmt.Fprintf(w, "Totals from the start of the loss (%.0f s):\n\n", secs)
	rows := [][]string{
		{"false node-failed reports (\"node failed\" logged by an agent)", strconv.Itoa(failed)},
		{"… about " + victim, strconv.Itoa(failedV)},
		{"… grouped by node (false verdicts)", strconv.Itoa(len(eps))},
		{"memberlist declarations (\"Marking X as failed\")", strconv.Itoa(decl)},
		{"suspicions (probe unanswered, directly and indirectly)", strconv.Itoa(susp)},
		{"… of " + victim, strconv.Itoa(suspV)},
		{"instances turned unhealthy, by reason", reasonsString(reasons)},
		{"node-failed reports before the loss", strconv.Itoa(before)},
		{"nodes reported left", strconv.Itoa(lefts)},
		{"agent CPU, ms/s: other agents min / median / max", perSec(s.min) + " / " + perSec(s.med) + " / " + perSec(s.max)},
		{"agent CPU, ms/s: " + victim, perSec(r.victimCPU)},
	}
	tableTo(w, []string{"", "count"}, rows)
	if warns := r.topWarnings(6); len(warns) > 0 {
		fmt.Fprintf(w, "Most frequent warnings and errors the agents logged (numbers as N; memberlist's own lines at most 10 a minute per agent):\n\n")
		tableTo(w, []string{"level and message", "lines"}, warns)
	}
	if r.pass() {
		fmt.Fprintf(w, "PASS: no false node-failed verdict in %.0f s with %.0f%% loss and %s starved %d times\n", secs, 100*o.loss, victim, len(r.windows))
	} else {
		fmt.Fprintf(w, "FAIL: %d false node-failed reports (%d verdicts grouped by node), %d of %d agents ran to the end\n", failed, len(eps), r.agentsAlive, o.n)
	}
}

// hogEnv, when set in the environment of this program, makes it a busy
// loop of that many threads instead (see runHog).
const hogEnv = "AEGIS_BENCH_BUSY_LOOP"

// runHog spins on n threads until killed.
func runHog(v string) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		n = runtime.NumCPU()
	}
	runtime.GOMAXPROCS(n)
	for range n {
		go func() {
			runtime.LockOSThread()
			x := uint64(1)
			for {
				x = x*6364136223846793005 + 1442695040888963407
			}
		}()
	}
	select {}
}
