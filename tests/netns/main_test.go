//go:build linux

// This file holds the test settings, TestMain (which also runs the helper
// processes the tests start inside namespaces), the skip conditions and
// the agent binary, built once per test run.

package netns

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/aegisipc/aegis/internal/agentproc"
)

// Settings of every cluster the tests build. The heartbeat timings are
// short enough to keep a test under a minute and long enough to be
// realistic on a LAN: an instance is judged unhealthy 3 s after its newest
// heartbeat (six missed beats), checked four times a second. Gossip uses
// memberlist's LAN profile (probe every 1 s, probe timeout 500 ms), which
// tolerates the 200 ms latency and the packet loss the tests inject; the
// local profile's 100 ms probe timeout would not.
const (
	agentCount     = 5
	service        = "count" // the built-in count service, on every agent
	gossipProfile  = "lan"
	hbInterval     = 500 * time.Millisecond
	hbTimeout      = 3 * time.Second
	healthCheck    = 250 * time.Millisecond
	gossipPort     = 7946
	callRate       = 100 // calls a second started by aegis load
	attemptTimeout = time.Second
	callTimeout    = 5 * time.Second
	startLimit     = 20 * time.Second // for processes to start and a cluster to converge
)

// Environment of the helper processes the tests start: helperEnv names the
// helper TestMain runs instead of the tests.
const (
	helperEnv   = "AEGIS_NETNS_HELPER"
	helperDelay = "delay"
)

// lossDurationEnv overrides how long TestPacketLossEveryLink holds its
// loss; logDirEnv, when set, names a directory where every process's
// output is written when its test ends.
const (
	lossDurationEnv = "AEGIS_NETNS_LOSS_DURATION"
	logDirEnv       = "AEGIS_NETNS_LOG_DIR"
)

func TestMain(m *testing.M) {
	switch h := os.Getenv(helperEnv); h {
	case "":
	case helperDelay:
		os.Exit(runDelayer())
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: unknown helper\n", helperEnv, h)
		os.Exit(2)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { removeBuildDir() }))
}

// requireLab skips the test unless namespaces can be made here: Linux,
// root, the ip command, and not -short. Whether ip netns add works is
// checked when the first namespace is made (see newLab).
func requireLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped under -short: the namespace tests take minutes")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: network namespaces need root (run go test as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: the ip command (Debian package iproute2) is not installed")
	}
}

// requireTC skips the test when the tc command is missing.
func requireTC(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("tc"); err != nil {
		t.Skip("skipped: the tc command (Debian package iproute2) is not installed")
	}
}

// lossDuration returns how long the packet-loss test holds its loss.
func lossDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv(lossDurationEnv)
	if v == "" {
		return 30 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 5*time.Second {
		t.Fatalf("%s=%q: want a Go duration of at least 5s", lossDurationEnv, v)
	}
	return d
}

// The agent binary, built once for all tests into buildDir.
var (
	buildOnce sync.Once
	buildDir  string
	agentBin  string
	buildErr  error
)

func removeBuildDir() {
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
}

// agentBinary returns the path of the aegis binary, building it on first
// use.
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		start := time.Now()
		if buildDir, buildErr = os.MkdirTemp("", "aegis-netns-"); buildErr != nil {
			return
		}
		if agentBin, buildErr = agentproc.Build(context.Background(), buildDir); buildErr == nil {
			t.Logf("built the agent binary in %v", time.Since(start).Round(time.Millisecond))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return agentBin
}
