package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
)

// logCounter is a slog.Handler that counts the warnings and errors every
// node logs, by message (memberlist's lines by their text up to the first
// digit or address, so that alike lines count together). Nodes rate-limit
// memberlist's warnings, so the counts are lower bounds.
type logCounter struct {
	mu sync.Mutex
	m  map[string]int
}

func newLogCounter() *logCounter { return &logCounter{m: make(map[string]int)} }

func (l *logCounter) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn
}

func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	msg := logKey(r.Message)
	l.mu.Lock()
	l.m[msg]++
	l.mu.Unlock()
	return nil
}

func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }

// logKey shortens a log message to what alike messages share: the text
// before " from=", or else before the first digit or "=".
func logKey(msg string) string {
	if i := strings.Index(msg, " from="); i > 0 {
		msg = msg[:i]
	} else if i := strings.IndexAny(msg, "0123456789="); i > 0 {
		msg = msg[:i]
	}
	msg = strings.TrimSpace(msg)
	if len(msg) > 70 {
		msg = msg[:70]
	}
	return msg
}

// take returns the counts since the last take, most frequent first, as
// "message ×count" strings, at most max of them.
func (l *logCounter) take(max int) []string {
	l.mu.Lock()
	m := l.m
	l.m = make(map[string]int)
	l.mu.Unlock()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	var out []string
	for _, k := range keys[:min(len(keys), max)] {
		out = append(out, fmt.Sprintf("%q ×%d", k, m[k]))
	}
	return out
}
