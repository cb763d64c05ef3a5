// This file holds the call subcommand: one CallWithFailover from an
// observer node, printing every attempt.

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aegisipc/aegis"
)

// callOptions are the call subcommand's flags.
type callOptions struct {
	obs            observeFlags
	key, messageID string
	callTimeout    time.Duration
	attemptTimeout time.Duration
	wait           time.Duration
}

func callFlagSet(o *callOptions) *flag.FlagSet {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	o.obs.register(fs, false)
	fs.StringVar(&o.key, "key", "", "routing `key` (aegis.WithKey); with it the observer routes by consistent-hash, else round-robin")
	fs.StringVar(&o.messageID, "message-id", "", "message `ID` of the call (default: generated); the same ID on a retry is answered once")
	fs.DurationVar(&o.callTimeout, "call-timeout", 10*time.Second, "deadline of the call, every attempt included")
	fs.DurationVar(&o.attemptTimeout, "attempt-timeout", aegis.DefaultConfig().AttemptTimeout, "bound of one attempt before failing over")
	fs.DurationVar(&o.wait, "wait", 5*time.Second, "how long to wait after joining for a healthy instance of SERVICE")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, `usage: aegis call SERVICE METHOD PAYLOAD -join SEEDS [flags]

Calls METHOD of SERVICE once with CallWithFailover, PAYLOAD as the
request's bytes, from an observer node that joins the cluster (-join
SEEDS, plus the secret key as -secret, -key-file or $AEGIS_KEY, and
-gossip as the cluster's nodes have them), registers nothing and leaves
when done. It prints every attempt (instance, node, whether it was the
first try, a same-instance retry, a failover or a hedge, its outcome and
duration), then the answer. The exit status is 1 when the call failed.
The admin endpoint is read-only, so call has no -admin.

Examples:

  aegis call echo echo hello -join 127.0.0.1:7946 -gossip local -secret "$AEGIS_KEY"
  aegis call billing charge '{"order":7}' -join 10.0.0.1:7946 -message-id order-7 -json

Flags:
`)
		fs.PrintDefaults()
	}
	return fs
}

// callReport is the call subcommand's -json output.
type callReport struct {
	Service  string        `json:"service"`
	Method   string        `json:"method"`
	Attempts []attemptJSON `json:"attempts"`
	Answer   string        `json:"answer,omitempty"`
	Error    string        `json:"error,omitempty"`
}

type attemptJSON struct {
	Instance   string  `json:"instance"`
	Node       string  `json:"node"`
	Kind       string  `json:"kind"` // first, retry, failover or hedge
	Outcome    string  `json:"outcome"`
	DurationMs float64 `json:"duration_ms"`
}

// runCall is the call subcommand.
func runCall(args []string, stdout, stderr io.Writer) error {
	o := &callOptions{}
	fs := callFlagSet(o)
	pos, err := parseArgs(fs, args, &o.obs.node.config, stdout, "SERVICE", "METHOD", "PAYLOAD")
	if err != nil {
		return err
	}
	if len(o.obs.node.join) == 0 {
		return usagef("-join SEEDS is required: call joins the cluster to make the call")
	}
	if err := o.obs.check(fs); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s, err := o.obs.openSource(ctx, stderr, func(cfg *aegis.Config) {
		cfg.AttemptTimeout = o.attemptTimeout
		if o.key != "" {
			cfg.Balancer = aegis.ConsistentHash()
		}
	})
	if err != nil {
		return err
	}
	defer s.close()
	if err := waitHealthy(ctx, s.node, pos[0], o.wait); err != nil {
		return fmt.Errorf("%w; run 'aegis services' to see what the cluster has", err)
	}
	rep := o.call(ctx, s.node, pos[0], pos[1], []byte(pos[2]))
	if o.obs.json {
		_ = printJSON(stdout, rep)
	} else {
		printCallText(stdout, rep)
	}
	if rep.Error != "" {
		return errors.New("the call failed after the attempts above")
	}
	return nil
}

// call makes the call and collects its attempts.
func (o *callOptions) call(ctx context.Context, node *aegis.Node, service, method string, payload []byte) callReport {
	var mu sync.Mutex
	rep := callReport{Service: service, Method: method, Attempts: []attemptJSON{}}
	seen := map[string]bool{}
	observe := func(a aegis.Attempt) {
		mu.Lock()
		defer mu.Unlock()
		kind := "first"
		switch {
		case a.Hedge:
			kind = "hedge"
		case a.Try > 0:
			kind = "retry"
		case len(seen) > 0 && !seen[a.InstanceID]:
			kind = "failover"
		}
		seen[a.InstanceID] = true
		outcome := "ok"
		if a.Err != nil {
			outcome = a.Err.Error()
		}
		rep.Attempts = append(rep.Attempts, attemptJSON{Instance: a.InstanceID, Node: a.Node, Kind: kind, Outcome: outcome,
			DurationMs: float64(a.Duration.Microseconds()) / 1000})
	}
	opts := []aegis.CallOption{aegis.WithAttemptObserver(observe)}
	if o.key != "" {
		opts = append(opts, aegis.WithKey(o.key))
	}
	if o.messageID != "" {
		opts = append(opts, aegis.WithMessageID(o.messageID))
	}
	cctx, cancel := context.WithTimeout(ctx, o.callTimeout)
	defer cancel()
	out, err := node.CallWithFailover(cctx, service, method, payload, opts...)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		rep.Error = err.Error()
	} else {
		rep.Answer = string(out)
	}
	return rep
}

func printCallText(w io.Writer, rep callReport) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tINSTANCE\tNODE\tKIND\tDURATION\tOUTCOME")
	for i, a := range rep.Attempts {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", i+1, a.Instance, a.Node, a.Kind,
			time.Duration(a.DurationMs*float64(time.Millisecond)).Round(10*time.Microsecond), a.Outcome)
	}
	_ = tw.Flush()
	if rep.Error != "" {
		fmt.Fprintf(w, "error: %s\n", rep.Error)
		return
	}
	fmt.Fprintf(w, "answer: %s\n", rep.Answer)
}

// printCompactJSON writes v as one line of JSON.
func printCompactJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
