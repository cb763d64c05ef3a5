// This file holds the Server's monitor goroutine, which passes on reader roles held by slow handlers.

package rpc

import "time"

// handoffDelay is how long a handler may run before the reader role it
// holds passes to another goroutine, and monitorTick how often the monitor
// looks. A handler loses the role at the first look at least handoffDelay
// after it started, so a request arriving on the same connection behind a
// slow handler waits about a millisecond before being read. Looking more
// often would not make that shorter: with every goroutine waiting, the Go
// runtime wakes for timers at millisecond granularity. handoffDelay is
// five times inlineHandlerTime, so the monitor rarely catches a fast
// handler.
const (
	handoffDelay = 100 * time.Microsecond
	monitorTick  = time.Millisecond
)

// monitorQuiet is how many ticks without a held role the monitor waits
// before it exits.
const monitorQuiet = 100

// ensureMonitor starts the monitor if it is not running. A reader calls it
// while holding a connection (and so the Server's WaitGroup) open.
func (s *Server) ensureMonitor() {
	if !s.monitoring.Load() && s.monitoring.CompareAndSwap(false, true) {
		s.wg.Add(1)
		go s.monitor()
	}
}

// monitor passes on reader roles held by handlers for handoffDelay, until no
// role has been held for monitorQuiet ticks or the Server closes.
func (s *Server) monitor() {
	defer s.wg.Done()
	t := time.NewTicker(monitorTick)
	defer t.Stop()
	quiet := 0
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if s.passHeldRoles() {
			quiet = 0
			continue
		}
		if quiet++; quiet < monitorQuiet {
			continue
		}
		s.monitoring.Store(false)
		// A role taken just before the Store found the monitor running:
		// look again, and go on unless another monitor was started.
		if !s.passHeldRoles() || !s.monitoring.CompareAndSwap(false, true) {
			return
		}
		quiet = 0
	}
}

// passHeldRoles passes on every role held for handoffDelay and reports
// whether any role was held.
func (s *Server) passHeldRoles() bool {
	now := s.now()
	held := false
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns.all {
		h := sc.heldSince.Load()
		if h == 0 {
			continue
		}
		held = true
		if now-h >= int64(handoffDelay) && sc.heldSince.CompareAndSwap(h, 0) {
			s.stats.handoffs.Add(1)
			sc.slowHandler(now - h) // before the new reader decides
			sc.passRole()           // the new reader writes what was queued
		}
	}
	return held
}
