//go:build linux

// This file holds the processes the tests start inside namespaces (see
// internal/agentproc), killed by their PID when the test ends, and
// polling.

package netns

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegisipc/aegis/internal/agentproc"
)

// proc is a process started in a namespace with ip netns exec, which
// execs it in place: the PID is the program's own.
type proc struct {
	*agentproc.Proc
	stdout, stderr *agentproc.Log
}

// startProc starts argv in namespace ns with env added to this process's
// environment. The process is killed by its PID with SIGKILL when the test
// ends if it is still running (and by the kernel if this process dies
// first), and the cleanup waits for it to exit.
func startProc(t *testing.T, name, ns string, env []string, argv ...string) *proc {
	t.Helper()
	p := &proc{stdout: agentproc.NewLog(), stderr: agentproc.NewLog()}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	var err error
	if p.Proc, err = agentproc.Start(name, cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.kill(t)
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
	base := filepath.Join(dir, strings.ReplaceAll(t.Name()+"-"+p.Name, " ", "-"))
	for suffix, l := range map[string]*agentproc.Log{".stdout": p.stdout, ".stderr": p.stderr} {
		if l.Len() == 0 {
			continue
		}
		if err := os.WriteFile(base+suffix, []byte(l.Tail(l.Len())), 0o644); err != nil {
			t.Errorf("keep the log of %s: %v", p.Name, err)
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

// wait waits up to limit for the process to exit and fails the test when
// it does not, or when it exits with an error.
func (p *proc) wait(t *testing.T, limit time.Duration) {
	t.Helper()
	if !p.Wait(limit) {
		t.Fatalf("%s did not exit within %v; its stderr ends with:\n%s", p.Name, limit, p.stderr.Tail(20))
	}
	if err := p.Err(); err != nil {
		t.Fatalf("%s: %v; its stderr ends with:\n%s", p.Name, err, p.stderr.Tail(20))
	}
}

// stop sends SIGTERM to the process by its PID and waits up to 10 s for
// it to exit; then it is killed.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if p.Alive() && !p.Stop(10*time.Second) {
		t.Errorf("%s did not exit within 10s of SIGTERM; killed it", p.Name)
	}
}

// kill sends SIGKILL to the process by its PID and waits for it to exit.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if !p.Kill(10 * time.Second) {
		t.Errorf("%s (pid %d) did not exit within 10s of SIGKILL", p.Name, p.PID)
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
