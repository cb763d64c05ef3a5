package aegis

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

func slogStderr() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestMemberlistLinesKeepTheirLevel(t *testing.T) {
	var buf bytes.Buffer
	l := memberlistLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	l.Printf("[ERR] memberlist: failed to receive: boom")
	l.Printf("[WARN] memberlist: refuting a suspect message")
	l.Printf("[INFO] memberlist: marking node-02 as failed")
	l.Printf("[DEBUG] memberlist: stream connection")
	l.Printf("no prefix")
	out := buf.String()
	for _, want := range []string{
		`level=ERROR msg="memberlist: failed to receive: boom"`,
		`level=WARN msg="memberlist: refuting a suspect message"`,
		`level=INFO msg="memberlist: marking node-02 as failed"`,
		`level=DEBUG msg="memberlist: stream connection"`,
		`level=DEBUG msg="no prefix"`,
	} {
		require.Contains(t, out, want)
	}
	buf.Reset()
	l = memberlistLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	for i := 0; i < 100; i++ {
		l.Printf("[ERR] memberlist: bad packet from 10.0.0.9:%d", i)
	}
	require.Equal(t, 10, strings.Count(buf.String(), "\n"), "errors a peer can cause are rate-limited")
}

// TestHealthChangesLogged: at Info, a node logs members joining and
// instances changing health, and nothing per call or per heartbeat.
func TestHealthChangesLogged(t *testing.T) {
	var logs syncBuf
	c := newCluster(t, 2, false, func(cfg *Config) {
		if cfg.NodeName == "node-00" {
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		}
	})
	c.waitConverged(10 * time.Second)
	for range 20 {
		_, err := c.nodes[0].Call(context.Background(), "svc", "echo", nil)
		require.NoError(t, err)
	}
	c.regs[1].SetStatus(StatusUnhealthy)
	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(logs.String(), `level=WARN msg="health changed" node=node-00 service=svc instance=inst-1 instance_node=node-01 from=healthy to=unhealthy reason=self-reported`)
	}, "the change to unhealthy logged at Warn:\n%s", lazyText(logs.String))
	out := logs.String()
	require.Contains(t, out, `level=INFO msg="node joined" node=node-00 peer=node-01`)
	require.NotContains(t, out, "learned of an instance", "Debug records stay out at Info")
	require.NotContains(t, out, "level=DEBUG")
	require.LessOrEqual(t, strings.Count(out, "\n"), 10, "no per-call or per-heartbeat lines:\n%s", out)
}

// lazyText prints f's result when formatted.
type lazyText func() string

func (l lazyText) String() string { return l() }
