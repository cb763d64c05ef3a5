// Command aegis-bench measures an Aegis cluster running inside one process:
// how fast registrations spread, how fast a cold cluster converges, how fresh
// heartbeats stay, how fast a crashed node is noticed, what idle gossip
// costs, and how fast a role group's standby takes over from a crashed
// active. Every subcommand prints a Markdown report (settings first, then
// tables) on stdout and its progress on stderr.
//
// Usage:
//
//	aegis-bench spread    [-n 10,50,100] [-runs 5]
//	aegis-bench coldstart [-n 10,50,100] [-runs 5]
//	aegis-bench freshness [-n 50] [-instances 5] [-duration 60s]
//	aegis-bench failure   [-n 5,20] [-runs 5]
//	aegis-bench cost      [-n 50] [-instances 5] [-duration 30s]
//	aegis-bench many      [-n 3] [-instances 10000] [-watch 2m]
//	aegis-bench promotion [-runs 20] [-modes majority,always] [-lease 400ms]
//	aegis-bench scale     [-n 50,100,200,500] [-instances 2] [-cost 30s] [-fresh 60s] [-csv F]
//	aegis-bench model     [-measured F] [-n 1000,5000] [-instances 2] [-interval 5s] [-loss 0.01]
//	aegis-bench verdicts  [-n 20] [-duration 10m] [-loss 0.1] [-starve busy|cpumax|stop|none]
//
// Common flags: -gossip lan|fast|local, -mem, -cap, -settle, -seeds.
//
// verdicts is the exception to "one process": it runs aegis agent
// processes in a network namespace (Linux, as root) and counts the false
// node-failed verdicts they report under packet loss while one of them is
// starved of CPU.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type subcommand struct {
	name    string
	summary string
	run     func(args []string) error
}

var subcommands = []subcommand{
	{"spread", "N settled nodes register one instance each at the same moment; time until all see all", runSpread},
	{"coldstart", "N-1 nodes start, join node 0 and register concurrently; time until all see all", runColdstart},
	{"freshness", "heartbeat age seen by every node for every instance over a long window", runFreshness},
	{"failure", "one node crashes (Shutdown); time until every other node marks its instance unhealthy", runFailure},
	{"cost", "steady-state gossip bytes and CPU per node per second", runCost},
	{"many", "one node of a few registers thousands of instances; registration time, time until all are healthy everywhere, verdicts afterwards", runMany},
	{"promotion", "a role group's active crashes (Shutdown); time until a standby is promoted and answers calls", runPromotion},
	{"scale", "for each cluster size on the in-memory network: spread, cold start, heartbeat freshness, bytes and CPU per node", runScale},
	{"model", "bytes, CPU and convergence per node as functions of N, instances, interval, fan-out and loss, fitted to a scale run; projects larger clusters", runModel},
	{"verdicts", "agent processes in a network namespace with packet loss, one starved of CPU at intervals; false node-failed verdicts (Linux, root)", runVerdicts},
}

func usage() {
	w := os.Stderr
	fmt.Fprintf(w, "usage: %s <subcommand> [flags]\n\nsubcommands:\n", progName())
	for _, s := range subcommands {
		fmt.Fprintf(w, "  %-10s %s\n", s.name, s.summary)
	}
	fmt.Fprintf(w, "\nRun '%s <subcommand> -h' for its flags.\n", progName())
}

func progName() string { return filepath.Base(os.Args[0]) }

// fdLimit is the RLIMIT_NOFILE soft limit after raiseFileLimit.
var fdLimit string

func main() {
	if v := os.Getenv(hogEnv); v != "" {
		runHog(v) // the busy loop of aegis-bench verdicts -starve busy
		return
	}
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "-help" || name == "--help" || name == "help" {
		usage()
		return
	}
	fdLimit = raiseFileLimit()
	for _, s := range subcommands {
		if s.name == name {
			err := s.run(os.Args[2:])
			stopProfile()
			if err != nil {
				if err == flag.ErrHelp {
					return
				}
				fmt.Fprintf(os.Stderr, "%s %s: %v\n", progName(), name, err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "%s: unknown subcommand %q\n\n", progName(), name)
	usage()
	os.Exit(2)
}

// raiseFileLimit lifts the open-file soft limit to the hard limit: a hundred
// nodes on the real network hold several sockets each.
func raiseFileLimit() string {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		progress("getrlimit: %v", err)
		return "unknown"
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			progress("setrlimit NOFILE to %d: %v", lim.Max, err)
		} else {
			lim = want
		}
	}
	return strconv.FormatUint(lim.Cur, 10)
}

// progress prints a timestamped line on stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// parseInts parses "10,50,100".
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		v, err := strconv.Atoi(f)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("bad node count %q", f)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no node counts in %q", s)
	}
	return out, nil
}

// commandLine is the command as typed, without the program's directory.
func commandLine() string {
	parts := []string{progName()}
	for _, a := range os.Args[1:] {
		if strings.ContainsAny(a, " \t\"'") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}
