//go:build unix

// Package agentproc starts and watches processes of the aegis command for
// the process tests, the namespace tests and the soak: it builds the
// binary, starts processes that die with their parent (on Linux), signals
// them by their PID, waits for their exit and reads the lines they log
// (see Log).
package agentproc

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Package is the import path of the aegis command.
const Package = "github.com/aegisipc/aegis/cmd/aegis"

// Build builds the aegis command into dir and returns the binary's path.
// It runs the go command, which finds the module from the working
// directory: the caller must run inside the module.
func Build(ctx context.Context, dir string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is needed to build the agent: %w", err)
	}
	bin := filepath.Join(dir, "aegis")
	if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, Package).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", Package, err, out)
	}
	return bin, nil
}

// Proc is a started process.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	PID  int

	exited chan struct{}
	err    error // Wait's; set before exited is closed
}

// Start starts cmd under name, with process attributes that make the
// kernel kill it when this process dies (on Linux), so that none is left
// behind even when this process is killed, and watches for its exit.
func Start(name string, cmd *exec.Cmd) (*Proc, error) {
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, PID: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Exited is closed once the process has exited and its output is read.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Alive reports whether the process has not exited.
func (p *Proc) Alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Err returns the error Wait returned, or nil while the process runs.
func (p *Proc) Err() error {
	if p.Alive() {
		return nil
	}
	return p.err
}

// ExitCode returns the exit status, or -1 while the process runs or when
// a signal ended it.
func (p *Proc) ExitCode() int {
	if p.Alive() {
		return -1
	}
	return p.Cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process by its PID, unless it has exited.
func (p *Proc) Signal(sig syscall.Signal) error {
	if !p.Alive() {
		return fmt.Errorf("%s (pid %d) has exited", p.Name, p.PID)
	}
	if err := syscall.Kill(p.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.Name, p.PID, err)
	}
	return nil
}

// Wait waits up to limit for the process to exit and reports whether it
// did.
func (p *Proc) Wait(limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-p.exited:
		return true
	case <-t.C:
		return false
	}
}

// Kill sends SIGKILL (which also ends a stopped process) and waits up to
// limit for the exit; it reports whether the process exited.
func (p *Proc) Kill(limit time.Duration) bool {
	_ = p.Signal(syscall.SIGKILL)
	return p.Wait(limit)
}

// Stop ends the process gracefully: SIGCONT in case it is stopped, then
// SIGTERM; SIGKILL if it has not exited within limit, and another limit
// for that. It reports whether the graceful stop sufficed.
func (p *Proc) Stop(limit time.Duration) bool {
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	if p.Wait(limit) {
		return true
	}
	p.Kill(limit)
	return false
}

// SysProcAttr returns the process attributes Start gives a process: on
// Linux, killed when its parent dies. For commands run to completion
// rather than started.
func SysProcAttr() *syscall.SysProcAttr { return sysProcAttr() }
