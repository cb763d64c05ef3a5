package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

// header prints the settings block that heads every report.
func header(sub string, c *common, extra ...string) {
	w := os.Stdout
	fmt.Fprintf(w, "## aegis-bench %s\n\n", sub)
	fmt.Fprintf(w, "Settings:\n\n")
	fmt.Fprintf(w, "- command: `%s`\n", commandLine())
	fmt.Fprintf(w, "- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "- library: %s\n", libraryVersion())
	fmt.Fprintf(w, "- runtime: %s %s/%s, %d CPUs, GOMAXPROCS %d, RLIMIT_NOFILE %s\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), fdLimit)
	fmt.Fprintf(w, "- all nodes in one process; network: %s\n", c.networkName())
	fmt.Fprintf(w, "- gossip: %s: %s\n", c.gossipName(), gossipString(c.gossipConfig()))
	d := aegis.DefaultConfig()
	fmt.Fprintf(w, "- heartbeats: DefaultConfig(): enabled=%v, interval %v, timeout %v, health check every %v, reap after %v\n",
		d.HeartbeatEnabled, d.HeartbeatInterval, d.HeartbeatTimeout, d.HealthCheckInterval, d.ReapTimeout)
	fmt.Fprintf(w, "- cluster: nodes started one by one, then joined one by one (%s); convergence cap %v\n", c.joinName(), c.cap)
	for _, e := range extra {
		fmt.Fprintf(w, "- %s\n", e)
	}
	fmt.Fprintln(w)
}

func gossipString(g aegis.GossipConfig) string {
	return fmt.Sprintf("ProbeInterval=%v ProbeTimeout=%v SuspicionMult=%d GossipInterval=%v GossipNodes=%d RetransmitMult=%d HeartbeatRetransmitMult=%d PushPullInterval=%v GossipToTheDeadTime=%v TCPTimeout=%v ReconnectInterval=%v ReconnectTimeout=%v",
		g.ProbeInterval, g.ProbeTimeout, g.SuspicionMult, g.GossipInterval, g.GossipNodes, g.RetransmitMult, g.HeartbeatRetransmitMult,
		g.PushPullInterval, g.GossipToTheDeadTime, g.TCPTimeout, g.ReconnectInterval, g.ReconnectTimeout)
}

// libraryVersion reports the VCS revision the binary was built from.
func libraryVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "github.com/aegisipc/aegis (no build info)"
	}
	var rev, when, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		// Built with -buildvcs=false: ask git in the working directory.
		out, err := exec.Command("git", "rev-parse", "HEAD").Output()
		if err != nil {
			return bi.Main.Path + " (revision unknown: build with -buildvcs=true inside the repository)"
		}
		rev = strings.TrimSpace(string(out))
		if out, err := exec.Command("git", "log", "-1", "--format=%cI").Output(); err == nil {
			when = strings.TrimSpace(string(out))
		}
		if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(out)) > 0 {
			modified = "true"
		}
		when += ", from git in the working directory at run time"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	s := fmt.Sprintf("%s @ %s (%s)", bi.Main.Path, rev, when)
	if modified == "true" {
		s += ", with uncommitted changes in the working tree"
	}
	return s
}

// ms formats d in milliseconds.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond))
}

// pct returns the p-quantile (0<p<=1) of sorted d: the smallest value with
// at least p of the values at or below it.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// spreadStats are min, median and max.
type spreadStats struct{ min, med, max time.Duration }

func summarize(d []time.Duration) spreadStats {
	if len(d) == 0 {
		return spreadStats{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spreadStats{s[0], med, s[len(s)-1]}
}

// table prints a Markdown table on stdout.
func table(head []string, rows [][]string) { tableTo(os.Stdout, head, rows) }

// tableTo writes a Markdown table to w.
func tableTo(w io.Writer, head []string, rows [][]string) {
	fmt.Fprintf(w, "| %s |\n", strings.Join(head, " | "))
	seps := make([]string, len(head))
	for i := range seps {
		seps[i] = "---:"
		if i == 0 {
			seps[i] = "---"
		}
	}
	fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
	for _, r := range rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
	}
	fmt.Fprintln(w)
}
