// This file holds the agent subcommand: a standalone node serving built-in
// test services until a signal makes it leave the cluster.

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/runlog"
)

// errForced is returned when a second signal cut the graceful leave short.
var errForced = errors.New("second signal: stopped without finishing the leave")

// forcedStopWait bounds how long a forced stop waits for the leave in
// progress to notice its cancelled context before the process exits.
const forcedStopWait = time.Second

// agentOptions are the agent's parsed flags.
type agentOptions struct {
	node         nodeFlags
	serve        listFlag
	instanceID   string
	runsFile     string
	leaveTimeout time.Duration
	adminAddr    string
	specs        []serveSpec // parsed from serve
	roles        roleFlags
	promotion    string // -promotion, parsed into roles

	// started, when set (by tests), is called with the node once its
	// services are registered, before it joins the seeds.
	started func(*aegis.Node)
}

// agentFlagSet returns the agent's flag set, writing into o.
func agentFlagSet(o *agentOptions) *flag.FlagSet {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	o.node.register(fs, "127.0.0.1:7946")
	fs.Var(&o.serve, "serve", "built-in service to serve, `KIND[:SERVICE]`, comma-separated or repeated (see above)")
	fs.StringVar(&o.instanceID, "instance-id", "", "`ID` of every served instance (default \"<service>-<node name>\")")
	fs.StringVar(&o.adminAddr, "admin-addr", "", "serve the node's read-only admin endpoint (JSON: /services, /members, /health, /route, /events) on this `host:port`; "+
		"it has no authentication: keep it on loopback or an operators-only network")
	fs.StringVar(&o.runsFile, "runs-file", "", "for delivery tests: append one JSON line per run of a count service's handler to `PATH` ({\"instance\",\"run\",\"method\",\"message_id\"})")
	fs.DurationVar(&o.leaveTimeout, "leave-timeout", 10*time.Second, "on SIGTERM or SIGINT, how long the graceful leave (drain, deregister, tell peers) may take")
	o.roles.register(fs, &o.promotion)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, `usage: aegis agent [flags]

Runs one node: it joins the seeds given by -join, serves the built-in
services given by -serve and logs every change it sees in the cluster
(instances registered, deregistered, healthy or not) until SIGTERM or
SIGINT, on which it leaves gracefully (exit status 0). A second signal
stops it at once (exit status 1).

Built-in services (-serve KIND[:SERVICE[:ROLE]]; SERVICE defaults to KIND;
ROLE, active or standby, makes the instance a member of the service's
active/standby role group, with -priority, -promotion and -group-size).
Every method of a built-in service does what its kind says:
`)
		for _, k := range kinds {
			fmt.Fprintf(w, "  %-6s %s\n", k.name, k.summary)
		}
		fmt.Fprint(w, `except method "whoami", which answers {"instance","node","service"} on
every kind (with "epoch" when a role group's active answers), so a caller
can see which instance answered. Each service is
registered with instance ID "<service>-<node name>" unless -instance-id is
given.

The secret key comes from -key, -key-file or $`+keyEnv+`; on loopback no key
is needed. Example:

  aegis agent -name a -bind 127.0.0.1:7946 -serve echo -key "$(head -c 32 /dev/urandom | base64)"

Flags:
`)
		fs.PrintDefaults()
	}
	return fs
}

// parseAgent parses the agent's command line (and -config file).
func parseAgent(args []string, stdout io.Writer) (*agentOptions, error) {
	o := &agentOptions{}
	fs := agentFlagSet(o)
	if err := parseFlags(fs, args, &o.node.config, stdout); err != nil {
		return nil, err
	}
	specs, err := parseServe(o.serve)
	if err != nil {
		return nil, err
	}
	o.specs = specs
	if err := o.roles.parse(o.promotion); err != nil {
		return nil, err
	}
	if o.leaveTimeout <= 0 {
		return nil, usagef("-leave-timeout must be positive, got %v", o.leaveTimeout)
	}
	return o, nil
}

// runAgent is the agent subcommand.
func runAgent(args []string, stdout, stderr io.Writer) error {
	o, err := parseAgent(args, stdout)
	if err != nil {
		return err
	}
	log, err := o.node.newLogger(stderr)
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	return o.run(log, os.Getenv, sigs)
}

// run starts the node, registers the services, joins the seeds and waits
// for the first signal on sigs; then it leaves gracefully. A second signal
// during the leave returns errForced.
func (o *agentOptions) run(log *slog.Logger, getenv func(string) string, sigs <-chan os.Signal) error {
	cfg, err := o.node.nodeConfig(log, getenv)
	if err != nil {
		return err
	}
	node, err := aegis.New(cfg)
	if err != nil {
		return err
	}
	log = log.With("node", node.Name())
	node.Subscribe(func(e aegis.Event) { logEvent(log, e) })
	var record *runlog.Writer
	if o.runsFile != "" {
		if record, err = runlog.Create(o.runsFile); err != nil {
			_ = node.Shutdown()
			return fmt.Errorf("-runs-file: %w", err)
		}
		// Closed once the node has stopped, so after the last run.
		defer func() {
			if err := record.Close(); err != nil {
				log.Error("runs file", "err", err)
			}
		}()
	}
	regs, err := registerServices(context.Background(), node, o.specs, o.instanceID, record, o.roles)
	if err != nil {
		_ = node.Shutdown()
		return err
	}
	ids := make([]string, len(regs))
	for i, r := range regs {
		ids[i] = r.Instance().Service + "/" + r.Instance().ID
	}
	attrs := []any{"gossip", node.Addr(), "calls", selfCallAddr(node),
		"instances", strings.Join(ids, ","), "members", len(node.Members()), "pid", os.Getpid()}
	if o.adminAddr != "" {
		stopAdmin, url, err := serveAdmin(node, o.adminAddr, log)
		if err != nil {
			_ = node.Shutdown()
			return err
		}
		defer stopAdmin()
		attrs = append(attrs, "admin", url)
	}
	log.Info("aegis agent started", attrs...)
	if o.started != nil {
		o.started(node)
	}

	joinCtx, cancelJoin := context.WithCancel(context.Background())
	defer cancelJoin()
	joined := make(chan error, 1)
	go func() {
		if len(o.node.join) == 0 {
			joined <- nil
			return
		}
		k, err := joinSeeds(joinCtx, node, o.node.join, o.node.joinTimeout, log)
		if err == nil {
			log.Info("joined the cluster", "seeds_reached", k, "members", strings.Join(memberNames(node), ","))
		}
		joined <- err
	}()
	var sig os.Signal
	select {
	case err := <-joined:
		if err != nil {
			_ = node.Shutdown()
			return err
		}
		sig = <-sigs
	case sig = <-sigs:
		cancelJoin()
		<-joined
	}
	return leave(node, log, o.leaveTimeout, sig, sigs)
}

// leave leaves the cluster gracefully within timeout. Another signal on
// sigs cancels the leave's context (Leave then stops waiting and shuts the
// node down at once) and returns errForced once the leave has returned,
// or forcedStopWait has passed as a last resort: exiting the process is
// the immediate stop, which peers see as a crash.
func leave(node *aegis.Node, log *slog.Logger, timeout time.Duration, sig os.Signal, sigs <-chan os.Signal) error {
	log.Info("leaving the cluster", "signal", sig.String(), "timeout", timeout)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	left := make(chan error, 1)
	go func() { left <- node.Leave(ctx) }()
	select {
	case err := <-left:
		if err != nil {
			log.Warn("leave did not finish cleanly", "err", err)
		}
		log.Info("left the cluster", "took", time.Since(start).Round(time.Millisecond))
		return nil
	case sig := <-sigs:
		log.Warn("second signal: stopping at once", "signal", sig.String())
		cancel()
		select {
		case <-left:
		case <-time.After(forcedStopWait):
		}
		return errForced
	}
}

// logEvent logs one event of the node's view of the cluster; status is the
// instance's status after the event.
func logEvent(log *slog.Logger, e aegis.Event) {
	attrs := []any{"event", e.Type.String(), "service", e.Instance.Service, "instance", e.Instance.ID,
		"instance_node", e.Instance.Node, "addr", e.Instance.Addr, "status", e.NewStatus.String()}
	if e.Type == aegis.EventStatusChanged {
		attrs = append(attrs, "from", e.OldStatus.String())
	}
	if e.Type == aegis.EventRoleChanged {
		attrs = append(attrs, "role", e.Instance.Role.String(), "epoch", e.Instance.Epoch)
	}
	if e.Reason != "" {
		attrs = append(attrs, "reason", e.Reason)
	}
	log.Info("instance "+e.Type.String(), attrs...)
}

// serveAdmin serves node's admin endpoint on addr until the returned stop
// is called; it returns the endpoint's URL.
func serveAdmin(node *aegis.Node, addr string, log *slog.Logger) (stop func(), url string, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("-admin-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: aegis.AdminHandler(node), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin endpoint stopped", "err", err)
		}
	}()
	return func() { _ = srv.Close(); <-done }, "http://" + ln.Addr().String(), nil
}
