// This file holds the read-only subcommands: members, services, watch and
// route.

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aegisipc/aegis"
)

// inspectCommand describes one read-only subcommand for newInspect.
type inspectCommand struct {
	name, usage, about, example string
	positional                  []string
	flags                       func(fs *flag.FlagSet)
}

// newInspect returns the flag set of a read-only subcommand, with its -h.
func newInspect(c inspectCommand, o *observeFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	o.register(fs, true)
	if c.flags != nil {
		c.flags(fs)
	}
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: aegis %s\n\n%s\n\n%s\n\nExamples:\n\n%s\n\nFlags:\n", c.usage, c.about, sourceHelp, c.example)
		fs.PrintDefaults()
	}
	return fs
}

// withSource parses args, opens the source and runs f with it; SIGINT and
// SIGTERM cancel ctx.
func withSource(c inspectCommand, o *observeFlags, args []string, stdout, stderr io.Writer,
	f func(ctx context.Context, s *source, pos []string) error) error {
	fs := newInspect(c, o)
	pos, err := parseArgs(fs, args, &o.node.config, stdout, c.positional...)
	if err != nil {
		return err
	}
	if err := o.check(fs); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s, err := o.openSource(ctx, stderr, nil)
	if err != nil {
		return err
	}
	defer s.close()
	return f(ctx, s, pos)
}

// reqCtx bounds one request by -timeout.
func (o *observeFlags) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, o.timeout)
}

var membersCommand = inspectCommand{
	name: "members", usage: "members [flags]",
	about: `Lists the nodes of the cluster as one node sees them: name, state
(alive; suspect while memberlist waits for it to refute a failed probe;
failed), gossip address and call address.`,
	example: `  aegis members -admin http://127.0.0.1:8080
  aegis members -join 127.0.0.1:7946 -gossip local -secret "$AEGIS_KEY" -json`,
}

// runMembers is the members subcommand.
func runMembers(args []string, stdout, stderr io.Writer) error {
	o := &observeFlags{}
	return withSource(membersCommand, o, args, stdout, stderr, func(ctx context.Context, s *source, _ []string) error {
		rctx, cancel := o.reqCtx(ctx)
		defer cancel()
		var ms aegis.AdminMembers
		if _, err := s.get(rctx, "/members", &ms); err != nil {
			return err
		}
		if o.json {
			return printJSON(stdout, ms)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATE\tGOSSIP\tCALLS")
		for _, m := range ms.Members {
			name := m.Name
			if m.Self {
				name += " (reporting)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, m.State, m.Addr, dash(m.CallAddr))
		}
		return tw.Flush()
	})
}

var servicesCommand = inspectCommand{
	name: "services", usage: "services [SERVICE] [flags]",
	about: `Lists every known service instance (or SERVICE's only): its status,
role, node, call address, the age of its newest heartbeat and whether the
reporting node's passive ejection keeps it out of routing (and for how
long). Ages are on the reporting node's clock: an observer (-join) has
just learned of every instance, so its ages start from its join.`,
	example: `  aegis services -admin http://127.0.0.1:8080
  aegis services billing -join 127.0.0.1:7946 -gossip local -secret "$AEGIS_KEY"`,
}

// runServices is the services subcommand.
func runServices(args []string, stdout, stderr io.Writer) error {
	o := &observeFlags{}
	c := servicesCommand
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		c.positional = []string{"SERVICE"}
	}
	return withSource(c, o, args, stdout, stderr, func(ctx context.Context, s *source, pos []string) error {
		rctx, cancel := o.reqCtx(ctx)
		defer cancel()
		path := "/services"
		if len(pos) == 1 {
			path += "?service=" + url.QueryEscape(pos[0])
		}
		var sv aegis.AdminServices
		if _, err := s.get(rctx, path, &sv); err != nil {
			return err
		}
		if o.json {
			return printJSON(stdout, sv)
		}
		if len(sv.Instances) == 0 && len(pos) == 1 {
			return fmt.Errorf("no instance of service %q is known to node %s (run 'aegis services' for every service)", pos[0], sv.Node)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tINSTANCE\tSTATUS\tROLE\tNODE\tADDRESS\tHEARTBEAT\tEJECTED")
		for _, in := range sv.Instances {
			ej := "no"
			if in.Ejected {
				ej = fmt.Sprintf("for %s", secondsText(in.EjectedForSeconds))
			}
			role := in.Role
			if in.Role == "active" && in.Epoch > 0 {
				role = fmt.Sprintf("active@%d", in.Epoch) // with the epoch it became active at
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s ago\t%s\n", in.Service, in.ID, in.Status, role, in.Node, in.Addr,
				secondsText(in.HeartbeatAgeSeconds), ej)
		}
		return tw.Flush()
	})
}

var watchCommand = inspectCommand{
	name: "watch", usage: "watch [flags]",
	about: `Prints every change one node sees, as it happens, until interrupted
(or -count events): instances registered, deregistered, changing status,
ejected from its routing and reinstated, with the reason.`,
	example: `  aegis watch -admin http://127.0.0.1:8080
  aegis watch -join 127.0.0.1:7946 -gossip local -secret "$AEGIS_KEY" -json -count 10`,
}

// runWatch is the watch subcommand.
func runWatch(args []string, stdout, stderr io.Writer) error {
	o := &observeFlags{}
	var count int
	c := watchCommand
	c.flags = func(fs *flag.FlagSet) {
		fs.IntVar(&count, "count", 0, "exit after this many events (0: until SIGINT or SIGTERM)")
	}
	return withSource(c, o, args, stdout, stderr, func(ctx context.Context, s *source, _ []string) error {
		seen := 0
		ready := func() {
			fmt.Fprintf(stderr, "watching events of %s (Ctrl-C to stop)\n", s.base)
			if !o.json {
				fmt.Fprintf(stdout, "%-12s  %-14s  %-32s  %-12s  %-22s  %s\n", "TIME", "EVENT", "SERVICE/INSTANCE", "NODE", "STATUS", "REASON")
			}
		}
		return s.events(ctx, ready, func(e aegis.AdminEvent) bool {
			if o.json {
				_ = printCompactJSON(stdout, e)
			} else {
				st := e.NewStatus
				if e.OldStatus != e.NewStatus {
					st = e.OldStatus + " -> " + e.NewStatus
				}
				fmt.Fprintf(stdout, "%-12s  %-14s  %-32s  %-12s  %-22s  %s\n", e.Time.Format("15:04:05.000"), e.Type,
					e.Service+"/"+e.Instance, e.Node, st, e.Reason)
			}
			seen++
			return count == 0 || seen < count
		})
	})
}

var routeCommand = inspectCommand{
	name: "route", usage: "route SERVICE [-key K | -resource R | -group G] [-method M] [flags]",
	about: `Says which instance of SERVICE a call would reach now, and why: the
balancer, the candidates it chose among (healthy ones, or degraded ones
when none is healthy), the instances it skipped and their status. With
-admin the answer is the admin node's own routing (its balancer, its
ejections); with -join it is the observer's, with -balancer (default:
consistent-hash when -key is given, else round-robin). A key's instance
under consistent-hash is exact; other balancers answer with one draw.
With -resource the answer is the resource's owner (or why there is none);
for a service with active/standby roles it is the group's active and its
epoch (-group picks one group of the service).`,
	example: `  aegis route billing -key customer-42 -admin http://127.0.0.1:8080
  aegis route orders -resource order-17 -admin http://127.0.0.1:8080
  aegis route ledger -group eu -admin http://127.0.0.1:8080
  aegis route billing -join 127.0.0.1:7946 -gossip local -secret "$AEGIS_KEY" -balancer least-loaded`,
}

// balancers are the -balancer choices.
var balancers = map[string]func() aegis.Balancer{
	"round-robin": aegis.RoundRobin, "random": aegis.Random, "least-loaded": aegis.LeastLoaded, "consistent-hash": aegis.ConsistentHash,
}

// runRoute is the route subcommand.
func runRoute(args []string, stdout, stderr io.Writer) error {
	o := &observeFlags{}
	var key, method, balancer string
	var rq routeQuery
	c := routeCommand
	c.positional = []string{"SERVICE"}
	c.flags = func(fs *flag.FlagSet) {
		fs.StringVar(&key, "key", "", "routing `key` of the call (aegis.WithKey), read by consistent-hash")
		fs.StringVar(&rq.resource, "resource", "", "route to the owner of this `resource` (aegis.WithResource)")
		fs.StringVar(&rq.group, "group", "", "route to the active of this role `group` of the service (aegis.WithGroup)")
		fs.StringVar(&method, "method", "", "`method` of the call")
		fs.StringVar(&balancer, "balancer", "", "with -join: round-robin, random, least-loaded or consistent-hash")
	}
	fs := newInspect(c, o)
	pos, err := parseArgs(fs, args, &o.node.config, stdout, c.positional...)
	if err != nil {
		return err
	}
	if err := o.check(fs); err != nil {
		return err
	}
	if balancer != "" && o.admin != "" {
		return usagef("-balancer applies to -join only: with -admin the node's own balancer decides")
	}
	if balancer == "" {
		balancer = map[bool]string{true: "consistent-hash", false: "round-robin"}[key != ""]
	}
	mk, ok := balancers[balancer]
	if !ok {
		return usagef("-balancer %q: want round-robin, random, least-loaded or consistent-hash", balancer)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s, err := o.openSource(ctx, stderr, func(cfg *aegis.Config) { cfg.Balancer = mk() })
	if err != nil {
		return err
	}
	defer s.close()
	rq.method, rq.key = method, key
	return o.printRoute(ctx, s, pos[0], rq, stdout)
}

// routeQuery is what route asks besides the service.
type routeQuery struct{ method, key, resource, group string }

// printRoute asks the source for the route and prints it.
func (o *observeFlags) printRoute(ctx context.Context, s *source, service string, rq routeQuery, stdout io.Writer) error {
	q := url.Values{"service": {service}}
	for name, v := range map[string]string{"method": rq.method, "key": rq.key, "resource": rq.resource, "group": rq.group} {
		if v != "" {
			q.Set(name, v)
		}
	}
	rctx, cancel := o.reqCtx(ctx)
	defer cancel()
	var ri aegis.RouteInfo
	code, err := s.get(rctx, "/route?"+q.Encode(), &ri, 404)
	if err != nil {
		return err
	}
	if o.json {
		if err := printJSON(stdout, ri); err != nil {
			return err
		}
	} else {
		printRouteText(stdout, ri)
	}
	if code != 200 {
		return fmt.Errorf("no instance of %q can be reached: %s (run 'aegis services' to see its instances)", service, ri.Reason)
	}
	return nil
}

func printRouteText(w io.Writer, ri aegis.RouteInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "service\t%s\n", ri.Service)
	for _, f := range [][2]string{{"key", ri.Key}, {"resource", ri.Resource}, {"group", ri.Group}} {
		if f[1] != "" {
			fmt.Fprintf(tw, "%s\t%s\n", f[0], f[1])
		}
	}
	if ri.Epoch != 0 {
		fmt.Fprintf(tw, "epoch\t%d\n", ri.Epoch)
	}
	fmt.Fprintf(tw, "balancer\t%s\n", ri.Balancer)
	if ri.Instance != "" {
		fmt.Fprintf(tw, "instance\t%s on node %s at %s\n", ri.Instance, ri.Node, ri.Addr)
	} else {
		fmt.Fprintf(tw, "instance\t-\n")
	}
	fmt.Fprintf(tw, "reason\t%s\n", ri.Reason)
	fmt.Fprintf(tw, "candidates\t%s\n", dash(strings.Join(ri.Candidates, ", ")))
	if len(ri.Ejected) > 0 {
		fmt.Fprintf(tw, "ejected\t%s\n", strings.Join(ri.Ejected, ", "))
	}
	if len(ri.Unroutable) > 0 {
		fmt.Fprintf(tw, "skipped\t%s\n", strings.Join(ri.Unroutable, ", "))
	}
	_ = tw.Flush()
}

// dash returns s, or "-" when it is empty.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// secondsText formats seconds as a short duration ("1.2s", "350ms").
func secondsText(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}
