// This file adapts memberlist's log lines ("[ERR] memberlist: ...") to the
// node's slog.Logger at their own level, rate-limited where a peer can
// cause them, and logs the node's view of instance health.

package aegis

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"time"

	"github.com/aegisipc/aegis/internal/ratelog"
)

// memberlistLogger returns a *log.Logger for memberlist and the network
// transport: each line keeps its level; errors and warnings, which remote
// peers can cause at will (bad packets, failed streams), are limited to a
// few lines a minute per level.
func memberlistLogger(l *slog.Logger) *log.Logger {
	return log.New(&levelWriter{log: l, limit: ratelog.New(l, time.Minute, 10)}, "", 0)
}

// levelWriter turns one memberlist line into one slog record.
type levelWriter struct {
	log   *slog.Logger
	limit *ratelog.Limiter
}

var memberlistLevels = []struct {
	prefix []byte
	level  slog.Level
}{
	{[]byte("[ERR]"), slog.LevelError},
	{[]byte("[ERROR]"), slog.LevelError},
	{[]byte("[WARN]"), slog.LevelWarn},
	{[]byte("[INFO]"), slog.LevelInfo},
	{[]byte("[DEBUG]"), slog.LevelDebug},
}

func (w *levelWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	level := slog.LevelDebug
	for _, l := range memberlistLevels {
		if bytes.HasPrefix(line, l.prefix) {
			level, line = l.level, bytes.TrimSpace(line[len(l.prefix):])
			break
		}
	}
	if level >= slog.LevelWarn {
		w.limit.Log(level, "memberlist-"+level.String(), string(line))
	} else {
		w.log.Log(context.Background(), level, string(line))
	}
	return len(p), nil
}

// logEvents logs the node's view of instance health from a subscriber of
// its events, off the registry's lock: status changes at Info (Warn when
// an instance turns unhealthy), role changes, ejections and reinstatements
// at Info,
// instances learned or gone at Debug. Nothing is subscribed when the
// logger drops Info records.
func (n *Node) logEvents() {
	if !n.log.Enabled(bg, slog.LevelInfo) {
		return
	}
	n.bus.subscribe(func(e Event) {
		level, msg := slog.LevelDebug, ""
		switch e.Type {
		case EventStatusChanged:
			level, msg = slog.LevelInfo, "health changed"
			if e.NewStatus == StatusUnhealthy {
				level = slog.LevelWarn
			}
		case EventEjected:
			level, msg = slog.LevelInfo, "ejected from routing"
		case EventReinstated:
			level, msg = slog.LevelInfo, "back in routing"
		case EventRoleChanged:
			n.log.Log(bg, slog.LevelInfo, "role changed", "service", e.Instance.Service, "instance", e.Instance.ID,
				"instance_node", e.Instance.Node, "group", e.Instance.Group, "role", e.Instance.Role.String(),
				"epoch", e.Instance.Epoch, "reason", e.Reason)
			return
		case EventRegistered:
			msg = "learned of an instance"
		case EventDeregistered:
			msg = "instance gone"
		default:
			return
		}
		n.log.Log(bg, level, msg, "service", e.Instance.Service, "instance", e.Instance.ID, "instance_node", e.Instance.Node,
			"from", e.OldStatus.String(), "to", e.NewStatus.String(), "reason", e.Reason)
	})
}
