//go:build unix

// Command aegis-soak runs a cluster of aegis agent processes on loopback
// under steady CallWithFailover load while it kills, stops and terminates
// them at random, and checks that callers saw no error and that handler
// runs agree with acknowledged calls. See the usage text (-h) for what is
// run, reported and checked.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Exit statuses.
const (
	exitPass  = 0
	exitFail  = 1 // the verdict is FAIL (or the soak was interrupted)
	exitUsage = 2
	exitError = 3 // the soak could not run (build, start, join)
)

const usageText = `usage: aegis-soak [flags]

Soak test of aegis under process faults. It builds the aegis command (or
uses -agent), starts -agents agent processes on loopback serving the
built-in count service (aegis agent -serve count:count -gossip local, with
the shortened heartbeat settings below and a random secret key), and an
in-process client node that joins them and calls the service with
CallWithFailover at -rate calls a second for -duration. Meanwhile, one
agent at a time, chosen at random after a random pause of -fault-every/2
to 3×-fault-every/2, gets one of (at random, seeded by -seed):

  kill -9   then a new process under the same name, on the same ports or
            new ones (at random), 100-600ms after the exit
  SIGSTOP   for the heartbeat timeout plus 2-4s, then SIGCONT
  SIGTERM   a graceful leave and exit, then a restart as after kill -9

A fault is over when the client routes calls to the agent's instance at
its call address again and the instance has answered one; the next pause
starts then. No fault starts later than the heartbeat timeout plus 9s
before the end.

Every -report-every, and at the end, it prints: calls made, caller errors
(with the first error texts), handler runs against acknowledged calls,
p50/p99/max caller latency, the faults applied with their times and what
the client saw, and per agent process RSS and threads (the agent does not
expose its goroutines; RSS is VmRSS from /proc/PID/status), for the client
also goroutines. The final report ends with a one-line verdict.

What is checked. The count service answers each run with how many runs
its instance made since its process started, so each run of a process
has its own number; it does not see message IDs, so runs are matched to
calls per process, not one by one. The verdict is FAIL, and the exit
status 1, when:
  - any call returned an error to its caller;
  - an acknowledged call's answer is not a run of its own: malformed,
    from an instance routing never picked for the call, or a run (instance,
    process, number) another call's answer also carries (the call never
    ran);
  - on some instance, the runs no acknowledged answer carries outnumber
    the calls allowed to run there a second time: those routed to it
    (first try, failover or hedge) that another instance answered, that
    failed, or that were in flight while a new process of it started.
    Runs are exact for the processes running at the end (each is probed
    with one call) and a lower bound for those a fault ended. A second run
    on the same process (deduplication failing) is not allowed;
  - a faulted agent was not routed to and answering within 30s.

Every process is stopped by its PID at the end (SIGTERM, then SIGKILL if
it does not exit within 10s), and killed on Ctrl-C or an error; on Linux
the kernel also kills them if the soak dies. Logs of every process go to
-log-dir (a temporary directory, removed after a PASS, unless given).

Exit status: 0 PASS, 1 FAIL or interrupted, 2 usage error, 3 the soak
could not run.

Flags:
`

// parseOptions parses the command line.
func parseOptions(args []string, output io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("aegis-soak", flag.ContinueOnError)
	fs.SetOutput(output)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.agentBin, "agent", "", "aegis binary `path` (default: go build the aegis command of this module)")
	fs.IntVar(&o.agents, "agents", 5, "agent processes (at least 2)")
	fs.Float64Var(&o.rate, "rate", 200, "calls started per second (open loop)")
	fs.DurationVar(&o.duration, "duration", time.Minute, "how long to make calls")
	fs.DurationVar(&o.faultEvery, "fault-every", 10*time.Second, "mean pause between faults (each pause uniform in [d/2, 3d/2))")
	seed := fs.Uint64("seed", 0, "seed of the fault schedule (0: from the clock, printed)")
	fs.DurationVar(&o.reportEvery, "report-every", time.Minute, "period of the intermediate reports")
	fs.DurationVar(&o.hbInterval, "heartbeat-interval", 200*time.Millisecond, "heartbeat interval of agents and client")
	fs.DurationVar(&o.hbTimeout, "heartbeat-timeout", time.Second, "heartbeat timeout of agents and client")
	fs.DurationVar(&o.attemptTimeout, "attempt-timeout", 500*time.Millisecond, "the client's AttemptTimeout")
	fs.DurationVar(&o.callTimeout, "call-timeout", 5*time.Second, "deadline of each call, retries included")
	fs.StringVar(&o.logDir, "log-dir", "", "`directory` for the processes' logs (default: a temporary one, removed after a PASS)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	o.seed = *seed
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected argument %q (flags only)", fs.Arg(0))
	case o.agents < 2:
		return nil, fmt.Errorf("-agents must be at least 2, got %d", o.agents)
	case o.rate <= 0:
		return nil, fmt.Errorf("-rate must be positive, got %v", o.rate)
	case o.duration <= 0 || o.faultEvery <= 0 || o.reportEvery <= 0:
		return nil, errors.New("-duration, -fault-every and -report-every must be positive")
	case o.hbInterval <= 0 || o.hbTimeout < 2*o.hbInterval:
		return nil, errors.New("-heartbeat-timeout must be at least twice a positive -heartbeat-interval")
	case o.attemptTimeout <= 0 || o.callTimeout <= 0:
		return nil, errors.New("-attempt-timeout and -call-timeout must be positive")
	}
	return o, nil
}

func main() {
	os.Exit(mainStatus(os.Args[1:], os.Stdout, os.Stderr))
}

// mainStatus runs the soak and returns the exit status.
func mainStatus(args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitPass
	}
	if err != nil {
		fmt.Fprintf(stderr, "aegis-soak: %v\nRun 'aegis-soak -h' for usage.\n", err)
		return exitUsage
	}
	tempLogs := o.logDir == ""
	if tempLogs {
		if o.logDir, err = os.MkdirTemp("", "aegis-soak-logs-"); err != nil {
			fmt.Fprintf(stderr, "aegis-soak: %v\n", err)
			return exitError
		}
	} else if err := os.MkdirAll(o.logDir, 0o755); err != nil {
		fmt.Fprintf(stderr, "aegis-soak: %v\n", err)
		return exitError
	}
	// The first SIGINT or SIGTERM ends the soak early (every process is
	// killed and the report printed); a second one kills the soak at once.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); stop() }()

	res, err := run(ctx, o, stdout, stderr)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "aegis-soak: %v\nlogs are in %s\n", err, o.logDir)
		return exitError
	case res.pass:
		if tempLogs {
			_ = os.RemoveAll(o.logDir)
		}
		return exitPass
	}
	fmt.Fprintf(stderr, "logs are in %s\n", o.logDir)
	return exitFail
}
