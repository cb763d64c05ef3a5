//go:build linux

// This file holds the probe helper: this test binary, started on the
// client host, joins the cluster as a node of its own, asks every count
// instance for its count with one Call pinned to it, and prints each
// instance's handler runs before that call as one JSON object.

package netns

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

// Environment of the probe helper (and keyEnv for the secret key).
const (
	probeNameEnv    = "AEGIS_NETNS_PROBE_NAME"
	probeBindEnv    = "AEGIS_NETNS_PROBE_BIND"
	probeSeedsEnv   = "AEGIS_NETNS_PROBE_SEEDS"
	probeWantEnv    = "AEGIS_NETNS_PROBE_WANT"
	probeServiceEnv = "AEGIS_NETNS_PROBE_SERVICE"
)

// runProbe is the probe helper's main; it returns the exit status.
func runProbe() int {
	if err := probeRuns(); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 1
	}
	return 0
}

func probeRuns() error {
	key, err := base64.StdEncoding.DecodeString(os.Getenv(keyEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", keyEnv, err)
	}
	want, err := strconv.Atoi(os.Getenv(probeWantEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", probeWantEnv, err)
	}
	svc := os.Getenv(probeServiceEnv)
	cfg := aegis.DefaultConfig()
	cfg.NodeName = os.Getenv(probeNameEnv)
	cfg.BindAddr = os.Getenv(probeBindEnv)
	cfg.SecretKey = key
	cfg.Gossip = aegis.LANGossip()
	cfg.HeartbeatInterval, cfg.HeartbeatTimeout, cfg.HealthCheckInterval = hbInterval, hbTimeout, healthCheck
	cfg.AttemptTimeout = callTimeout
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	node, err := aegis.New(cfg)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = node.Leave(ctx)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), startLimit)
	defer cancel()
	if _, err := node.Join(ctx, strings.Split(os.Getenv(probeSeedsEnv), ",")...); err != nil {
		return err
	}
	var insts []aegis.Instance
	for insts = node.HealthyInstances(svc); len(insts) < want; insts = node.HealthyInstances(svc) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d healthy instances of %s seen, want %d", len(insts), svc, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
	runs := map[string]int64{}
	for _, in := range insts {
		var others []string
		for _, o := range insts {
			if o.ID != in.ID {
				others = append(others, o.ID)
			}
		}
		out, err := node.Call(ctx, svc, "read", nil, aegis.WithExclude(others...))
		if err != nil {
			return fmt.Errorf("read the count of %s: %w", in.ID, err)
		}
		var answer struct {
			Instance string `json:"instance"`
			Count    int64  `json:"count"`
		}
		if err := json.Unmarshal(out, &answer); err != nil || answer.Instance != in.ID {
			return fmt.Errorf("read the count of %s: answer %q (%v)", in.ID, out, err)
		}
		runs[in.ID] = answer.Count - 1 // without the probe's own call
	}
	return json.NewEncoder(os.Stdout).Encode(runs)
}
