//go:build linux

// This file holds the processes the tests start inside namespaces and
// what they write: a line log that decodes JSON lines, a process killed by
// its PID when the test ends, and polling.

package netns

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// line is one line a process wrote, with its JSON fields when it is JSON.
type line struct {
	raw    string
	fields map[string]any
}

func (l line) str(key string) string {
	s, _ := l.fields[key].(string)
	return s
}

// time returns the line's "time" field (slog's), or the zero time.
func (l line) time() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, l.str("time"))
	return t
}

// lineLog collects the lines written to it. Safe for concurrent use.
type lineLog struct {
	mu      sync.Mutex // guards partial and lines
	partial []byte
	lines   []line
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		ln := line{raw: string(l.partial[:i])}
		_ = json.Unmarshal(l.partial[:i], &ln.fields)
		l.partial = l.partial[i+1:]
		l.lines = append(l.lines, ln)
	}
}

// find returns the lines for which match is true, oldest first.
func (l *lineLog) find(match func(line) bool) []line {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []line
	for _, ln := range l.lines {
		if match(ln) {
			out = append(out, ln)
		}
	}
	return out
}

// len returns how many lines were written.
func (l *lineLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// contains reports whether a line equals s.
func (l *lineLog) contains(s string) bool {
	return len(l.find(func(ln line) bool { return ln.raw == s })) > 0
}

// tail returns the last n lines.
func (l *lineLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, ln := range l.lines[max(0, len(l.lines)-n):] {
		b.WriteString(ln.raw)
		b.WriteByte('\n')
	}
	return b.String()
}

// proc is a process started in a namespace with ip netns exec, which
// execs it in place: the PID is the program's own.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *lineLog
	exited         chan struct{}
	waitErr        error // set before exited is closed
}

// startProc starts argv in namespace ns with env added to this process's
// environment. The process is killed by its PID with SIGKILL when the test
// ends if it is still running (and by the kernel if this process dies
// first), and the cleanup waits for it to exit.
func startProc(t *testing.T, name, ns string, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, stdout: &lineLog{}, stderr: &lineLog{}, exited: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if p.alive() {
			_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		}
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, p.cmd.Process.Pid)
		}
		p.keepLogs(t)
	})
	return p
}

// keepLogs writes what the process wrote to files in the directory named
// by logDirEnv, when it is set.
func (p *proc) keepLogs(t *testing.T) {
	dir := os.Getenv(logDirEnv)
	if dir == "" {
		return
	}
	base := filepath.Join(dir, strings.ReplaceAll(t.Name()+"-"+p.name, " ", "-"))
	for suffix, l := range map[string]*lineLog{".stdout": p.stdout, ".stderr": p.stderr} {
		if l.len() == 0 {
			continue
		}
		if err := os.WriteFile(base+suffix, []byte(l.tail(l.len())), 0o644); err != nil {
			t.Errorf("keep the log of %s: %v", p.name, err)
		}
	}
}

// startHelper starts this test binary in namespace ns as the named helper
// (see TestMain), with env set.
func startHelper(t *testing.T, name, ns, helper string, env map[string]string) *proc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatalf("find the test binary: %v", err)
	}
	vars := []string{helperEnv + "=" + helper}
	for k, v := range env {
		vars = append(vars, k+"="+v)
	}
	return startProc(t, name, ns, vars, self)
}

// alive reports whether the process has not exited.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// exitErr returns the error Wait returned, or nil while the process runs.
func (p *proc) exitErr() error {
	if p.alive() {
		return nil
	}
	return p.waitErr
}

// wait waits up to limit for the process to exit and fails the test when
// it does not, or when it exits with an error.
func (p *proc) wait(t *testing.T, limit time.Duration) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(limit):
		t.Fatalf("%s did not exit within %v; its stderr ends with:\n%s", p.name, limit, p.stderr.tail(20))
	}
	if p.waitErr != nil {
		t.Fatalf("%s: %v; its stderr ends with:\n%s", p.name, p.waitErr, p.stderr.tail(20))
	}
}

// stop sends SIGTERM to the process by its PID and waits up to 10 s for
// it to exit; then it is killed.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if !p.alive() {
		return
	}
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not exit within 10s of SIGTERM; killing it", p.name)
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// kill sends SIGKILL to the process by its PID and waits for it to exit.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if p.alive() {
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) did not exit within 10s of SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// waitFor polls cond every 10 ms until it holds (true) or limit passes
// (false).
func waitFor(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// hold keeps a fault in place for d: the length of a fault is what the
// test is about, so this is a plain sleep.
func hold(d time.Duration) { time.Sleep(d) }
