// This file holds what the inspecting subcommands (members, services,
// watch, route, call) share: their common flags, positional arguments
// among flags, and the source they read: a node's admin endpoint (-admin)
// or an observer node that joins the cluster and registers nothing.

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

// observeFlags are the flags of every inspecting subcommand.
type observeFlags struct {
	quiet   bool // -log-level not given: the observer logs nothing
	node    nodeFlags
	admin   string
	json    bool
	timeout time.Duration
}

// sourceHelp is the part of every inspecting subcommand's -h that says
// where it reads from.
const sourceHelp = `It reads a node's admin endpoint (-admin URL, served by 'aegis agent
-admin-addr' or by aegis.AdminHandler in a program), or joins the
cluster itself (-join SEEDS, plus the cluster's secret key as -secret,
-key-file or $AEGIS_KEY, and -gossip as its nodes have it) as an
observer that registers nothing and leaves when done. Output is aligned
text; -json prints JSON instead.`

// register defines the common flags on fs. Node flags (for -join) keep
// their agent meaning, but the secret key is -secret (route and call take
// -key as the routing key); the observer logs only when -log-level is
// given.
func (f *observeFlags) register(fs *flag.FlagSet, withAdmin bool) {
	f.node.keyFlag = "secret"
	f.node.register(fs, "127.0.0.1:0")
	f.node.joinTimeout = 10 * time.Second
	fs.Lookup("join-timeout").DefValue = f.node.joinTimeout.String()
	fs.BoolVar(&f.json, "json", false, "print JSON instead of aligned text")
	f.timeout = 10 * time.Second // requests to the observer's own endpoint
	if withAdmin {
		fs.StringVar(&f.admin, "admin", "", "`URL` of a node's admin endpoint (http://127.0.0.1:8080), instead of -join")
		fs.DurationVar(&f.timeout, "timeout", f.timeout, "bound on each request to the admin endpoint")
	}
}

// check reports a usage error unless exactly one source is given; fs is
// the parsed flag set.
func (f *observeFlags) check(fs *flag.FlagSet) error {
	f.quiet = true
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "log-level" {
			f.quiet = false
		}
	})
	switch {
	case f.admin != "" && len(f.node.join) > 0:
		return usagef("give -admin or -join, not both")
	case f.admin == "" && len(f.node.join) == 0:
		return usagef("say where to look: -admin URL (a node's admin endpoint) or -join SEEDS (join the cluster as an observer)")
	case f.timeout <= 0:
		return usagef("-timeout must be positive, got %v", f.timeout)
	}
	if f.admin != "" {
		u, err := url.Parse(f.admin)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return usagef("-admin %q: want an http:// or https:// URL such as http://127.0.0.1:8080", f.admin)
		}
	}
	return nil
}

// parseArgs parses a command line whose positional arguments may sit
// among the flags ("route svc -key k"), and returns the positional ones;
// want is how many are required (extra ones are refused), names their
// names for the error message.
func parseArgs(fs *flag.FlagSet, args []string, configPath *string, stdout io.Writer, names ...string) ([]string, error) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil && !isBool(f) && i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	if err := parseFlags(fs, flags, configPath, stdout); err != nil {
		return nil, err
	}
	if len(pos) < len(names) {
		return nil, usagef("missing %s", strings.Join(names[len(pos):], " "))
	}
	if len(pos) > len(names) {
		return nil, usagef("unexpected argument %q", pos[len(names)])
	}
	return pos, nil
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// source is where an inspecting subcommand reads: an admin endpoint's
// base URL, and the observer node behind it when the command joined the
// cluster itself.
type source struct {
	base   string
	client *http.Client
	node   *aegis.Node // nil with -admin
	close  func()
}

// openSource returns the source the flags name. With -join it starts an
// observer node, joins the seeds and serves the node's admin endpoint on
// a loopback port of its own, so both kinds of source read the same JSON.
func (f *observeFlags) openSource(ctx context.Context, stderr io.Writer, tune func(*aegis.Config)) (*source, error) {
	client := &http.Client{}
	if f.admin != "" {
		return &source{base: strings.TrimRight(f.admin, "/"), client: client, close: client.CloseIdleConnections}, nil
	}
	node, err := f.startObserver(ctx, stderr, tune)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = node.Shutdown()
		return nil, fmt.Errorf("listen on loopback for the observer's admin endpoint: %w", err)
	}
	srv := &http.Server{Handler: aegis.AdminHandler(node), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	return &source{base: "http://" + ln.Addr().String(), client: client, node: node, close: func() {
		client.CloseIdleConnections()
		leaveCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = node.Leave(leaveCtx) // ends /events streams too
		_ = srv.Shutdown(leaveCtx)
		_ = srv.Close()
		<-done
	}}, nil
}

// startObserver starts a node that registers nothing and joins the seeds.
func (f *observeFlags) startObserver(ctx context.Context, stderr io.Writer, tune func(*aegis.Config)) (*aegis.Node, error) {
	log, err := f.node.newLogger(stderr)
	if err != nil {
		return nil, err
	}
	if f.quiet {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := f.node.nodeConfig(log, os.Getenv)
	if err != nil {
		return nil, err
	}
	if cfg.NodeName == "" {
		cfg.NodeName = "aegis-cli-" + randomSuffix()
	}
	if tune != nil {
		tune(cfg)
	}
	node, err := aegis.New(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := joinSeeds(ctx, node, f.node.join, f.node.joinTimeout, slog.New(slog.DiscardHandler)); err != nil {
		_ = node.Shutdown()
		return nil, fmt.Errorf("%w (check -join, the secret key and -gossip against the cluster's nodes)", err)
	}
	return node, nil
}

// randomSuffix returns 8 random hex digits.
func randomSuffix() string {
	b := aegis.NewSecretKey()
	return fmt.Sprintf("%x", b[:4])
}

// get GETs path from the source and decodes the JSON answer into v. An
// answer with another status than ok is returned as an error unless v
// can take it (want lists the statuses v takes).
func (s *source) get(ctx context.Context, path string, v any, want ...int) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w (is a node serving its admin endpoint there? 'aegis agent -admin-addr' serves one)", s.base+path, unwrapURL(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", s.base+path, err)
	}
	if resp.StatusCode != http.StatusOK && !slices.Contains(want, resp.StatusCode) {
		return resp.StatusCode, fmt.Errorf("GET %s: %s: %s", s.base+path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s: not an aegis admin endpoint (answer is not the JSON expected: %v)", s.base+path, err)
	}
	return resp.StatusCode, nil
}

// unwrapURL drops the *url.Error wrapper, whose text repeats the URL.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// events reads the /events stream and calls fn with each event until ctx
// ends, the stream ends or fn returns false. ready is called once the
// stream is open (the node has subscribed).
func (s *source) events(ctx context.Context, ready func(), fn func(aegis.AdminEvent) bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/events", nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s/events: %w (is a node serving its admin endpoint there?)", s.base, unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s/events: %s", s.base, resp.Status)
	}
	ready()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev aegis.AdminEvent
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return fmt.Errorf("GET %s/events: bad event %q: %w", s.base, data, err)
		}
		if !fn(ev) {
			return nil
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("GET %s/events: %w", s.base, err)
	}
	return errors.New("the node closed the event stream (it stopped or left)")
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
