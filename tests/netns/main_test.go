//go:build linux

// This file holds the test settings, TestMain (which also runs the helper
// processes the tests start inside namespaces), the skip conditions and
// the agent binary, built once per test run.

package netns

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
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
// use from the module that holds this package.
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		start := time.Now()
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("the go command is needed to build the agent: %w", err)
			return
		}
		if buildDir, err = os.MkdirTemp("", "aegis-netns-"); err != nil {
			buildErr = err
			return
		}
		agentBin = filepath.Join(buildDir, "aegis")
		cmd := exec.Command(goTool, "build", "-o", agentBin, "./cmd/aegis")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/aegis: %v\n%s", err, out)
			return
		}
		t.Logf("built the agent binary in %v", time.Since(start).Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return agentBin
}

// moduleRoot returns the directory of the go.mod of module
// github.com/aegisipc/aegis, the nearest one above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(f)
			first := ""
			if sc.Scan() {
				first = strings.TrimSpace(sc.Text())
			}
			f.Close()
			if first == "module github.com/aegisipc/aegis" {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module github.com/aegisipc/aegis above the working directory")
		}
		dir = parent
	}
}
