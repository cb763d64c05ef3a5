//go:build unix

// This file holds the agent processes (see internal/agentproc): starting
// an agent under a name with the soak's settings, the levels of its log,
// and stopping it.

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aegisipc/aegis/internal/agentproc"
)

// Limits of the agent processes.
const (
	startLimit   = 20 * time.Second // for a process to log its startup line
	leaveTimeout = 5 * time.Second  // the agents' -leave-timeout
	exitLimit    = leaveTimeout + 5*time.Second
)

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
	*agentproc.Proc
	life    int       // 1 for the first process under its name
	started time.Time // just before the process was started
	log     *logScan

	gossip, calls string // from its startup line

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
	p := &agentProc{life: life, log: newLogScan()}
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), "AEGIS_KEY="+s.key)
	cmd.Stdout = io.MultiWriter(f, p.log)
	cmd.Stderr = cmd.Stdout
	p.started = time.Now()
	if p.Proc, err = agentproc.Start(name, cmd); err != nil {
		_ = f.Close()
		return nil, err
	}
	go func() {
		<-p.Exited()
		_ = f.Close()
	}()
	if p.gossip, p.calls, err = agentproc.WaitStarted(ctx, p.Proc, p.log.Log, startLimit); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// kill sends SIGKILL (which also ends a stopped process) and waits for the
// exit.
func (p *agentProc) kill() { p.Kill(exitLimit) }

// stop ends the process gracefully: SIGCONT in case it is stopped, then
// SIGTERM; SIGKILL if it has not exited within exitLimit. It reports
// whether the graceful stop sufficed.
func (p *agentProc) stop() bool { return p.Stop(exitLimit) }

// maxLogKinds bounds the distinct warning and error messages a logScan
// keeps.
const maxLogKinds = 40

// logScan reads a process's JSON log lines as they are written (see
// agentproc.Log, which keeps the last 20) and counts the warnings and
// errors by message. Safe for concurrent use.
type logScan struct {
	*agentproc.Log

	mu       sync.Mutex     // guards the fields below
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
	l := &logScan{levels: map[string]int{}}
	l.Log = agentproc.NewTailLog(20, l.line)
	return l
}

// line takes one line.
func (l *logScan) line(ln agentproc.Line) {
	level, msg := ln.Str("level"), ln.Str("msg")
	if level != "WARN" && level != "ERROR" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.levels[level]++
	kind := digits.ReplaceAllString(msg, "N")
	i := slices.IndexFunc(l.messages, func(m logMessage) bool { return m.level == level && m.kind == kind })
	switch {
	case i >= 0:
		l.messages[i].count++
	case len(l.messages) < maxLogKinds:
		ex := msg
		if err := ln.Str("err"); err != "" {
			ex += ": " + err
		}
		l.messages = append(l.messages, logMessage{level: level, kind: kind, example: ex, count: 1})
	}
}

// digits matches the numbers in a log message (ports, addresses, node
// names, timeouts), which messages of one kind differ by.
var digits = regexp.MustCompile(`[0-9]+`)

// summary returns the warning and error lines and their messages.
func (l *logScan) summary() (warns, errs int, msgs []logMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.levels["WARN"], l.levels["ERROR"], slices.Clone(l.messages)
}
