// Package ratelog rate-limits log lines about events a remote peer can
// cause at will (bad packets, refused connections), so that an attacker or a
// broken peer cannot fill the disk through our logs.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Limiter lets through at most Burst lines per Every for each key and
// counts the lines it suppressed; the next line let through for that key
// carries the count as "suppressed". It is safe for concurrent use.
type Limiter struct {
	log   *slog.Logger
	every time.Duration
	burst int
	now   func() time.Time

	mu   sync.Mutex // guards keys
	keys map[string]*window
}

type window struct {
	start      time.Time
	n          int // lines let through in this window
	suppressed int // lines dropped since the last one let through
}

// maxKeys bounds the number of keys tracked; keys are meant to be a small
// fixed set (a message kind), never a remote address.
const maxKeys = 256

// New returns a Limiter writing to log that lets burst lines per every
// through for each key. A nil log discards everything.
func New(log *slog.Logger, every time.Duration, burst int) *Limiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Limiter{log: log, every: every, burst: max(burst, 1), now: time.Now, keys: make(map[string]*window)}
}

// Log writes msg at level under key unless key's budget for the current
// window is spent.
func (l *Limiter) Log(level slog.Level, key, msg string, args ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	now := l.now()
	l.mu.Lock()
	w := l.keys[key]
	if w == nil {
		if len(l.keys) >= maxKeys {
			clear(l.keys)
		}
		w = &window{start: now}
		l.keys[key] = w
	}
	if now.Sub(w.start) >= l.every {
		w.start, w.n = now, 0
	}
	if w.n >= l.burst {
		w.suppressed++
		l.mu.Unlock()
		return
	}
	w.n++
	suppressed := w.suppressed
	w.suppressed = 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.Log(context.Background(), level, msg, args...)
}

// Warn is Log at slog.LevelWarn.
func (l *Limiter) Warn(key, msg string, args ...any) { l.Log(slog.LevelWarn, key, msg, args...) }
