//go:build unix

// This file holds the agent processes: building the aegis binary, starting
// an agent under a name, reading its startup line and the levels of its
// log, signalling it by its PID, and stopping it.

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// agentPackage is the import path of the aegis command.
const agentPackage = "github.com/aegisipc/aegis/cmd/aegis"

// Limits of the agent processes.
const (
	startLimit   = 20 * time.Second // for a process to log its startup line
	leaveTimeout = 5 * time.Second  // the agents' -leave-timeout
	exitLimit    = leaveTimeout + 5*time.Second
)

// buildAgent builds the aegis command into dir and returns the binary's
// path.
func buildAgent(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "aegis")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, agentPackage).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", agentPackage, err, out)
	}
	return bin, nil
}

// agentSettings are what every agent process of a soak is started with.
type agentSettings struct {
	bin         string
	key         string // base64, passed through the environment
	service     string
	hbInterval  time.Duration
	hbTimeout   time.Duration
	healthCheck time.Duration
	logDir      string
}

// agentProc is one process of an agent.
type agentProc struct {
	name    string
	life    int // 1 for the first process under name
	cmd     *exec.Cmd
	pid     int
	started time.Time // just before the process was started
	log     *logScan
	file    *os.File

	gossip, calls string // from its startup line

	exited   chan struct{}
	exitCode int // set before exited is closed; -1 when a signal ended it

	// Set by the soak as the process goes.
	startStat, endStat procStat
	endedBy            string    // how it ended: the fault, or "SIGTERM at the end"
	ended              time.Time // when that began
}

// startAgent starts a process of agent name binding gossip to bind and
// calls to callBind ("" for a free port on bind's IP), joining seeds, and
// waits for its startup line. On error the process is killed.
func startAgent(ctx context.Context, s *agentSettings, name string, life int, bind, callBind string, seeds []string) (*agentProc, error) {
	args := []string{"agent", "-name", name, "-bind", bind, "-gossip", "local",
		"-heartbeat-interval", s.hbInterval.String(), "-heartbeat-timeout", s.hbTimeout.String(),
		"-health-check-interval", s.healthCheck.String(), "-serve", "count:" + s.service,
		"-log-format", "json", "-join-timeout", "20s", "-leave-timeout", leaveTimeout.String()}
	if callBind != "" {
		args = append(args, "-call-bind", callBind)
	}
	if len(seeds) > 0 {
		args = append(args, "-join", strings.Join(seeds, ","))
	}
	f, err := os.Create(filepath.Join(s.logDir, fmt.Sprintf("%s.%d.log", name, life)))
	if err != nil {
		return nil, err
	}
	p := &agentProc{name: name, life: life, log: newLogScan(), file: f, exited: make(chan struct{})}
	p.cmd = exec.Command(s.bin, args...)
	p.cmd.Env = append(os.Environ(), "AEGIS_KEY="+s.key)
	p.cmd.Stdout = io.MultiWriter(f, p.log)
	p.cmd.Stderr = p.cmd.Stdout
	p.cmd.SysProcAttr = procAttr()
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.pid = p.cmd.Process.Pid
	go func() {
		_ = p.cmd.Wait()
		p.exitCode = p.cmd.ProcessState.ExitCode()
		_ = f.Close()
		close(p.exited)
	}()
	t := time.NewTimer(startLimit)
	defer t.Stop()
	select {
	case <-p.log.startup:
		p.gossip, p.calls = p.log.startupField("gossip"), p.log.startupField("calls")
		if p.gossip == "" || p.calls == "" {
			p.kill()
			return nil, fmt.Errorf("%s: no addresses in its startup line", name)
		}
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s (pid %d) exited with status %d before it started; it wrote:\n%s", name, p.pid, p.exitCode, p.log.tail())
	case <-t.C:
		p.kill()
		return nil, fmt.Errorf("%s (pid %d) logged no startup line within %v; it wrote:\n%s", name, p.pid, startLimit, p.log.tail())
	case <-ctx.Done():
		p.kill()
		return nil, ctx.Err()
	}
}

// alive reports whether the process has not exited.
func (p *agentProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the process by its PID, unless it has exited.
func (p *agentProc) signal(sig syscall.Signal) error {
	if !p.alive() {
		return fmt.Errorf("%s (pid %d) has exited", p.name, p.pid)
	}
	if err := syscall.Kill(p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.name, p.pid, err)
	}
	return nil
}

// wait waits up to limit for the process to exit.
func (p *agentProc) wait(limit time.Duration) bool {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-p.exited:
		return true
	case <-t.C:
		return false
	}
}

// kill sends SIGKILL (which also ends a stopped process) and waits for the
// exit.
func (p *agentProc) kill() {
	_ = p.signal(syscall.SIGKILL)
	p.wait(exitLimit)
}

// stop ends the process gracefully: SIGCONT in case it is stopped, then
// SIGTERM; SIGKILL if it has not exited within exitLimit. It reports
// whether the graceful stop sufficed.
func (p *agentProc) stop() bool {
	_ = p.signal(syscall.SIGCONT)
	_ = p.signal(syscall.SIGTERM)
	if p.wait(exitLimit) {
		return true
	}
	p.kill()
	return false
}

// maxLogKinds bounds the distinct warning and error messages a logScan
// keeps.
const maxLogKinds = 40

// logScan reads a process's JSON log lines as they are written: the
// startup line, and the warnings and errors by message. Safe for
// concurrent use.
type logScan struct {
	startup chan struct{} // closed once the startup line is seen

	mu       sync.Mutex // guards the fields below
	partial  []byte
	fields   map[string]any // of the startup line
	last     []string       // the last lines, for error messages
	levels   map[string]int // "WARN", "ERROR" → lines
	messages []logMessage   // by first appearance
}

// logMessage is one kind of warning or error and how often it was logged.
type logMessage struct {
	level   string
	kind    string // the message with every number replaced by N
	example string // the first such line's message and err field
	count   int
}

func newLogScan() *logScan {
	return &logScan{startup: make(chan struct{}), levels: map[string]int{}}
}

// startupMsg is the message of the agent's startup line.
const startupMsg = "aegis agent started"

func (l *logScan) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.line(l.partial[:i])
		l.partial = l.partial[i+1:]
	}
}

// line takes one line; l.mu is held.
func (l *logScan) line(raw []byte) {
	if len(l.last) == 20 {
		l.last = l.last[1:]
	}
	l.last = append(l.last, string(raw))
	var f map[string]any
	if json.Unmarshal(raw, &f) != nil {
		return
	}
	msg, _ := f["msg"].(string)
	level, _ := f["level"].(string)
	if msg == startupMsg && l.fields == nil {
		l.fields = f
		close(l.startup)
	}
	if level != "WARN" && level != "ERROR" {
		return
	}
	l.levels[level]++
	kind := digits.ReplaceAllString(msg, "N")
	i := slices.IndexFunc(l.messages, func(m logMessage) bool { return m.level == level && m.kind == kind })
	switch {
	case i >= 0:
		l.messages[i].count++
	case len(l.messages) < maxLogKinds:
		ex := msg
		if err, _ := f["err"].(string); err != "" {
			ex += ": " + err
		}
		l.messages = append(l.messages, logMessage{level: level, kind: kind, example: ex, count: 1})
	}
}

// digits matches the numbers in a log message (ports, addresses, node
// names, timeouts), which messages of one kind differ by.
var digits = regexp.MustCompile(`[0-9]+`)

func (l *logScan) startupField(key string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, _ := l.fields[key].(string)
	return s
}

func (l *logScan) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.last, "\n")
}

// summary returns the warning and error lines and their messages.
func (l *logScan) summary() (warns, errs int, msgs []logMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.levels["WARN"], l.levels["ERROR"], slices.Clone(l.messages)
}
