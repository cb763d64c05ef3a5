package agentproc

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// StartedMsg is the message of the line an agent logs once its node runs
// and its services are registered; its fields "gossip" and "calls" are
// the node's addresses.
const StartedMsg = "aegis agent started"

// Line is one line a process wrote.
type Line struct {
	At     time.Time      // when it was read
	Raw    string         // without its newline
	Fields map[string]any // when it is a JSON object
}

// Str returns the string field key, or "".
func (l Line) Str(key string) string {
	s, _ := l.Fields[key].(string)
	return s
}

// Time returns the line's "time" field (slog's), or the zero time.
func (l Line) Time() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, l.Str("time"))
	return t
}

// Log collects the lines written to it, decoding JSON ones, and notes the
// agent's startup line. Safe for concurrent use.
type Log struct {
	keep    int        // lines kept; 0: all
	onLine  func(Line) // when not nil, called with every line, mu held
	started chan struct{}

	mu      sync.Mutex // guards the fields below
	partial []byte
	lines   []Line
	startup Line // set before started is closed
}

// NewLog returns a Log that keeps every line.
func NewLog() *Log { return NewTailLog(0, nil) }

// NewTailLog returns a Log that keeps the last keep lines (every line
// when keep is 0) and calls onLine, when it is not nil, with every line
// in order. onLine must not call the Log's methods.
func NewTailLog(keep int, onLine func(Line)) *Log {
	return &Log{keep: keep, onLine: onLine, started: make(chan struct{})}
}

func (l *Log) Write(p []byte) (int, error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		ln := Line{At: now, Raw: string(l.partial[:i])}
		_ = json.Unmarshal(l.partial[:i], &ln.Fields)
		l.partial = l.partial[i+1:]
		l.add(ln)
	}
}

// add takes one line; l.mu is held.
func (l *Log) add(ln Line) {
	if l.keep > 0 && len(l.lines) == l.keep {
		l.lines = append(l.lines[:0], l.lines[1:]...)
	}
	l.lines = append(l.lines, ln)
	if ln.Str("msg") == StartedMsg && l.startup.Fields == nil {
		l.startup = ln
		close(l.started)
	}
	if l.onLine != nil {
		l.onLine(ln)
	}
}

// Started is closed once the agent's startup line has been written.
func (l *Log) Started() <-chan struct{} { return l.started }

// StartupField returns field key of the startup line, or "" before it.
func (l *Log) StartupField(key string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.startup.Str(key)
}

// Find returns the kept lines for which match is true, oldest first.
func (l *Log) Find(match func(Line) bool) []Line {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Line
	for _, ln := range l.lines {
		if match(ln) {
			out = append(out, ln)
		}
	}
	return out
}

// Len returns how many lines are kept.
func (l *Log) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// Tail returns the last n kept lines, each with its newline.
func (l *Log) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, ln := range l.lines[max(0, len(l.lines)-n):] {
		b.WriteString(ln.Raw)
		b.WriteByte('\n')
	}
	return b.String()
}
