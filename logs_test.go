package aegis

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
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
