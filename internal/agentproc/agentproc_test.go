//go:build unix

package agentproc

import (
	"context"
	"fmt"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLog(t *testing.T) {
	var seen []string
	l := NewTailLog(2, func(ln Line) { seen = append(seen, ln.Raw) })
	_, _ = fmt.Fprint(l, "plain\n{\"msg\":\"x\",\"time\":\"2026-01-02T03:04:05.5Z\"}\n{\"msg\":\"")
	assert.Equal(t, 2, l.Len())
	_, _ = fmt.Fprint(l, StartedMsg+"\",\"gossip\":\"g:1\",\"calls\":\"c:2\"}\n")
	assert.Equal(t, []string{"plain", `{"msg":"x","time":"2026-01-02T03:04:05.5Z"}`, `{"msg":"aegis agent started","gossip":"g:1","calls":"c:2"}`}, seen)
	assert.Equal(t, 2, l.Len(), "the last two kept")
	assert.Equal(t, `{"msg":"x","time":"2026-01-02T03:04:05.5Z"}`+"\n"+`{"msg":"aegis agent started","gossip":"g:1","calls":"c:2"}`+"\n", l.Tail(5))
	x := l.Find(func(ln Line) bool { return ln.Str("msg") == "x" })
	require.Len(t, x, 1)
	assert.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC), x[0].Time())
	select {
	case <-l.Started():
	default:
		t.Fatal("startup line not noted")
	}
	assert.Equal(t, "g:1", l.StartupField("gossip"))
	assert.Equal(t, "c:2", l.StartupField("calls"))

	all := NewLog()
	for i := range 100 {
		_, _ = fmt.Fprintf(all, "%d\n", i)
	}
	assert.Equal(t, 100, all.Len())
	assert.Empty(t, all.StartupField("gossip"))
}

// start starts sh -c script with its output in a new Log.
func start(t *testing.T, script string) (*Proc, *Log) {
	t.Helper()
	l := NewLog()
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdout, cmd.Stderr = l, l
	p, err := Start("sh", cmd)
	require.NoError(t, err)
	t.Cleanup(func() { p.Kill(10 * time.Second) })
	return p, l
}

func TestProc(t *testing.T) {
	ctx := context.Background()
	t.Run("started, then stopped by SIGTERM", func(t *testing.T) {
		p, l := start(t, `echo '{"msg":"`+StartedMsg+`","gossip":"a:1","calls":"a:2"}'; exec sleep 60`)
		gossip, calls, err := WaitStarted(ctx, p, l, 10*time.Second)
		require.NoError(t, err)
		assert.Equal(t, "a:1", gossip)
		assert.Equal(t, "a:2", calls)
		assert.True(t, p.Alive())
		assert.Nil(t, p.Err())
		assert.Equal(t, -1, p.ExitCode())
		assert.True(t, p.Stop(10*time.Second), "sleep ends on SIGTERM")
		assert.False(t, p.Alive())
		assert.Error(t, p.Err())
		assert.ErrorContains(t, p.Signal(syscall.SIGTERM), "has exited")
	})
	t.Run("exits before it starts", func(t *testing.T) {
		p, l := start(t, `echo oops; exit 3`)
		_, _, err := WaitStarted(ctx, p, l, 10*time.Second)
		assert.ErrorContains(t, err, "exited with status 3 before it started")
		assert.ErrorContains(t, err, "oops")
		assert.Equal(t, 3, p.ExitCode())
	})
	t.Run("no startup line in time", func(t *testing.T) {
		p, l := start(t, `exec sleep 60`)
		_, _, err := WaitStarted(ctx, p, l, 50*time.Millisecond)
		assert.ErrorContains(t, err, "logged no startup line within 50ms")
		assert.False(t, p.Wait(10*time.Millisecond))
		assert.True(t, p.Kill(10*time.Second))
		assert.Equal(t, -1, p.ExitCode(), "ended by a signal")
	})
	t.Run("SIGTERM ignored, so killed", func(t *testing.T) {
		p, l := start(t, `trap '' TERM; echo ready; while :; do sleep 0.05; done`)
		deadline := time.Now().Add(10 * time.Second)
		for len(l.Find(func(ln Line) bool { return ln.Raw == "ready" })) == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		require.NoError(t, p.Signal(syscall.SIGSTOP))
		assert.False(t, p.Stop(300*time.Millisecond), "SIGCONT, SIGTERM ignored, then SIGKILL")
		assert.False(t, p.Alive())
	})
}
