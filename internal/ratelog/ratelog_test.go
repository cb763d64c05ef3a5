package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBurstPerWindowAndSuppressedCount(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Second, 2)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	for i := 0; i < 10; i++ {
		l.Warn("bad-packet", "dropped bad packet")
	}
	l.Warn("other", "other kind")
	require.Equal(t, 3, strings.Count(buf.String(), "\n"), buf.String())

	now = now.Add(time.Second)
	buf.Reset()
	l.Warn("bad-packet", "dropped bad packet")
	require.Contains(t, buf.String(), "suppressed=8")
}

func TestDisabledLevelCostsNothing(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError})), time.Second, 1)
	l.Warn("k", "x")
	require.Empty(t, buf.String())
	require.Empty(t, l.keys)
}
