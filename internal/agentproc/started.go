//go:build unix

package agentproc

import (
	"context"
	"fmt"
	"time"
)

// WaitStarted waits up to limit for the agent p, whose output goes to log,
// to write its startup line, and returns the gossip and call addresses it
// names. It fails when the process exits first, the line names no
// addresses, limit passes or ctx ends; the process is left as it is.
func WaitStarted(ctx context.Context, p *Proc, log *Log, limit time.Duration) (gossip, calls string, err error) {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-log.Started():
		gossip, calls = log.StartupField("gossip"), log.StartupField("calls")
		if gossip == "" || calls == "" {
			return "", "", fmt.Errorf("%s: no addresses in its startup line", p.Name)
		}
		return gossip, calls, nil
	case <-p.Exited():
		return "", "", fmt.Errorf("%s (pid %d) exited with status %d before it started (%v); it wrote:\n%s", p.Name, p.PID, p.ExitCode(), p.Err(), log.Tail(20))
	case <-t.C:
		return "", "", fmt.Errorf("%s (pid %d) logged no startup line within %v; it wrote:\n%s", p.Name, p.PID, limit, log.Tail(20))
	case <-ctx.Done():
		return "", "", ctx.Err()
	}
}
