// This file holds what every subcommand that runs a node shares: its flags,
// the JSON config file that mirrors them, the secret key, the logger, the
// aegis.Config they make, and joining the seeds.

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

// keyEnv is the environment variable read for the secret key when neither
// -key nor -key-file is given.
const keyEnv = "AEGIS_KEY"

// maxConfigFile bounds the config file read by -config.
const maxConfigFile = 1 << 20

// listFlag is a flag that may be repeated, each value a comma-separated
// list; empty items are dropped.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for item := range strings.SplitSeq(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l = append(*l, item)
		}
	}
	return nil
}

// nodeFlags are the flags that configure a node.
type nodeFlags struct {
	config         string
	name           string
	bind           string
	advertise      string
	callBind       string
	advertiseCall  string
	join           listFlag
	joinTimeout    time.Duration
	key            string
	keyFile        string
	cluster        string
	allowInsecure  bool
	gossip         string
	hbInterval     time.Duration
	hbTimeout      time.Duration
	healthInterval time.Duration
	logLevel       string
	logFormat      string

	// keyFlag is the name of the secret key's flag: "key" unless set
	// before register (subcommands whose -key is a routing key use
	// "secret").
	keyFlag string
}

// keyFlagName returns the name of the secret key's flag.
func (f *nodeFlags) keyFlagName() string {
	if f.keyFlag == "" {
		return "key"
	}
	return f.keyFlag
}

// register defines the node flags on fs; bind is the default of -bind.
func (f *nodeFlags) register(fs *flag.FlagSet, bind string) {
	d := aegis.DefaultConfig()
	fs.StringVar(&f.config, "config", "", "JSON `file` whose keys are flag names (\"bind\": \"127.0.0.1:7946\", \"join\": [\"a:7946\"]); flags given on the command line win")
	fs.StringVar(&f.name, "name", "", "node `name`, unique in the cluster (default: hostname plus a random suffix)")
	fs.StringVar(&f.bind, "bind", bind, "gossip `host:port` (UDP and TCP)")
	fs.StringVar(&f.advertise, "advertise", "", "gossip `ip:port` told to peers, when it differs from -bind (NAT)")
	fs.StringVar(&f.callBind, "call-bind", "", "call listener `ip:port` (default: the IP of -bind and a free port)")
	fs.StringVar(&f.advertiseCall, "advertise-call", "", "call `ip:port` peers dial, when it differs from -call-bind (NAT)")
	fs.Var(&f.join, "join", "seed gossip `addresses`, comma-separated or repeated; retried with backoff until one is reached or -join-timeout passes")
	fs.DurationVar(&f.joinTimeout, "join-timeout", 30*time.Second, "give up joining after this long (0: keep trying)")
	fs.StringVar(&f.key, f.keyFlagName(), "", "base64 secret key of 16, 24 or 32 bytes, the same on every node (make one: head -c 32 /dev/urandom | base64)")
	fs.StringVar(&f.keyFile, "key-file", "", "`file` holding the base64 secret key (instead of -key; without either, $"+keyEnv+" is read)")
	fs.StringVar(&f.cluster, "cluster", "", "cluster `name`: nodes with different names never merge")
	fs.BoolVar(&f.allowInsecure, "allow-insecure", false, "allow binding a non-loopback address without a key (anyone who reaches the ports can join and call)")
	fs.StringVar(&f.gossip, "gossip", "lan", "gossip `timings`: lan (memberlist's LAN profile), fast (aegis.FastLANGossip(): a crashed node noticed in about a second on a LAN) or local (faster still, for one host and tests)")
	fs.DurationVar(&f.hbInterval, "heartbeat-interval", d.HeartbeatInterval, "time between two heartbeats of each instance")
	fs.DurationVar(&f.hbTimeout, "heartbeat-timeout", d.HeartbeatTimeout, "age of an instance's newest heartbeat after which it is unhealthy (at least 2× -heartbeat-interval)")
	fs.DurationVar(&f.healthInterval, "health-check-interval", d.HealthCheckInterval, "how often heartbeat ages are checked")
	fs.StringVar(&f.logLevel, "log-level", "info", "`level`: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "`format`: text or json (logs go to stderr)")
}

// parseFlags parses args into fs, then fills the flags not given on the
// command line from the -config file, if any. Mistakes are *usageError;
// -h prints fs's usage on stdout and returns flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string, configPath *string, stdout io.Writer) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return err
		}
		return &usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q (flags only)", fs.Arg(0))
	}
	if *configPath == "" {
		return nil
	}
	data, err := readLimited(*configPath, maxConfigFile)
	if err != nil {
		return usagef("-config: %v", err)
	}
	if err := applyConfig(fs, data); err != nil {
		return usagef("-config %s: %v", *configPath, err)
	}
	return nil
}

// applyConfig sets every flag named in the JSON object data that was not
// given on the command line. Values are strings ("250ms"), booleans,
// numbers or, for list flags, arrays of strings.
func applyConfig(fs *flag.FlagSet, data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("unknown key %q (keys are the flag names, see -h)", k)
		}
		if given[k] {
			continue
		}
		vals, err := configValues(obj[k])
		if err != nil {
			return fmt.Errorf("key %q: %w", k, err)
		}
		for _, v := range vals {
			if err := fs.Set(k, v); err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
		}
	}
	return nil
}

// configValues turns one JSON value into the flag values it stands for.
func configValues(v any) ([]string, error) {
	switch v := v.(type) {
	case string:
		return []string{v}, nil
	case bool:
		return []string{strconv.FormatBool(v)}, nil
	case json.Number:
		return []string{v.String()}, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, item := range v {
			s, ok := item.(string)
			if !ok {
				return nil, fmt.Errorf("array items must be strings, got %v", item)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a string, boolean, number or array of strings, got %v", v)
}

// readLimited reads the file at path, refusing one larger than limit.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}

// secretKey returns the key given by -key, -key-file or, without either,
// the environment variable keyEnv (read through getenv); nil when none is
// set.
func (f *nodeFlags) secretKey(getenv func(string) string) ([]byte, error) {
	var text, from string
	switch {
	case f.key != "" && f.keyFile != "":
		return nil, usagef("-%s and -key-file: give one, not both", f.keyFlagName())
	case f.key != "":
		text, from = f.key, "-"+f.keyFlagName()
	case f.keyFile != "":
		data, err := readLimited(f.keyFile, 4096)
		if err != nil {
			return nil, usagef("-key-file: %v", err)
		}
		text, from = string(data), "-key-file "+f.keyFile
	case getenv(keyEnv) != "":
		text, from = getenv(keyEnv), "$"+keyEnv
	default:
		return nil, nil
	}
	key, err := decodeKey(text)
	if err != nil {
		return nil, usagef("%s: %v", from, err)
	}
	return key, nil
}

// decodeKey decodes a base64 secret key (standard alphabet, padded or not,
// surrounding white space ignored) and checks its length.
func decodeKey(text string) ([]byte, error) {
	text = strings.TrimSpace(text)
	key, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		key, err = base64.RawStdEncoding.DecodeString(text)
	}
	if err != nil {
		return nil, errors.New("not valid base64 (make a key with: head -c 32 /dev/urandom | base64)")
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("decodes to %d bytes; a key is 16, 24 or 32 bytes (make one with: head -c 32 /dev/urandom | base64)", len(key))
}

// newLogger returns a logger writing to w at the level and in the format
// of the flags.
func (f *nodeFlags) newLogger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return nil, usagef("-log-level %q: want debug, info, warn or error", f.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("-log-format %q: want text or json", f.logFormat)
}

// nodeConfig returns the aegis.Config the flags describe, validated.
func (f *nodeFlags) nodeConfig(log *slog.Logger, getenv func(string) string) (*aegis.Config, error) {
	cfg := aegis.DefaultConfig()
	cfg.NodeName = f.name
	cfg.BindAddr = f.bind
	cfg.AdvertiseAddr = f.advertise
	cfg.CallAddr = f.callBind
	cfg.AdvertiseCallAddr = f.advertiseCall
	cfg.ClusterName = f.cluster
	cfg.AllowInsecure = f.allowInsecure
	cfg.HeartbeatInterval = f.hbInterval
	cfg.HeartbeatTimeout = f.hbTimeout
	cfg.HealthCheckInterval = f.healthInterval
	cfg.Logger = log
	switch f.gossip {
	case "lan":
		cfg.Gossip = aegis.LANGossip()
	case "fast":
		cfg.Gossip = aegis.FastLANGossip()
	case "local":
		cfg.Gossip = aegis.LocalGossip()
	default:
		return nil, usagef("-gossip %q: want lan, fast or local", f.gossip)
	}
	key, err := f.secretKey(getenv)
	if err != nil {
		return nil, err
	}
	cfg.SecretKey = key
	if err := cfg.Validate(); err != nil {
		return nil, &usageError{err}
	}
	return cfg, nil
}

// joinSeeds joins the seeds, retrying with a jittered backoff from 100ms
// up to 5s until one is reached, ctx ends or timeout (when positive)
// passes. It returns how many seeds the successful attempt reached.
func joinSeeds(ctx context.Context, node *aegis.Node, seeds []string, timeout time.Duration, log *slog.Logger) (int, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var lastErr error
	failed := func(attempts int) error {
		why := "interrupted"
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			why = fmt.Sprintf("none reached within -join-timeout %v", timeout)
		}
		return fmt.Errorf("join seeds %s: %s after %d attempt(s); last error: %w", strings.Join(seeds, ", "), why, attempts, lastErr)
	}
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		n, err := node.Join(ctx, seeds...)
		if err == nil {
			return n, nil
		}
		if lastErr == nil || ctx.Err() == nil {
			lastErr = err
		}
		if ctx.Err() != nil {
			return 0, failed(attempt)
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		log.Warn("join failed; retrying", "seeds", strings.Join(seeds, ","), "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, failed(attempt)
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// selfCallAddr returns this node's call address as Members reports it.
func selfCallAddr(node *aegis.Node) string {
	for _, m := range node.Members() {
		if m.Name == node.Name() {
			return m.CallAddr
		}
	}
	return ""
}

// memberNames returns the names of the members node sees alive.
func memberNames(node *aegis.Node) []string {
	var out []string
	for _, m := range node.Members() {
		if m.State == aegis.MemberAlive {
			out = append(out, m.Name)
		}
	}
	return out
}
