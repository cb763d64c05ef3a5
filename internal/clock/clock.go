// Package clock lets Aegis read time and wait through an interface, so tests
// can drive the absolute heartbeat timeout without sleeping for it.
package clock

import (
	"sync"
	"time"
)

// Clock is the source of time for health decisions. Implementations must be
// safe for concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTicker returns a ticker firing every d on this clock.
	NewTicker(d time.Duration) Ticker
	// NewTimer returns a timer firing once, d from now, on this clock.
	NewTimer(d time.Duration) Timer
}

// Timer is the part of time.Timer Aegis uses. Reset and Stop follow
// time.Timer's Go 1.23 semantics: after either returns, no stale value is
// received from C.
type Timer interface {
	C() <-chan time.Time
	Reset(d time.Duration)
	Stop()
}

// Ticker is the part of time.Ticker Aegis uses.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Real is the wall clock.
type Real struct{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// NewTicker wraps time.NewTicker.
func (Real) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

// NewTimer wraps time.NewTimer.
func (Real) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTicker struct{ t *time.Ticker }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time   { return r.t.C }
func (r realTimer) Reset(d time.Duration) { r.t.Reset(d) }
func (r realTimer) Stop()                 { r.t.Stop() }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// Fake is a manually advanced clock for tests. Tickers and timers fire when
// Advance moves time past their next deadline; a tick that finds the
// ticker's channel full is dropped, as with time.Ticker.
type Fake struct {
	mu      sync.Mutex // guards now, tickers, timers and every fake timer's state
	now     time.Time
	tickers map[*fakeTicker]struct{}
	timers  map[*fakeTimer]struct{} // armed timers
}

// NewFake returns a fake clock set to start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start, tickers: make(map[*fakeTicker]struct{}), timers: make(map[*fakeTimer]struct{})}
}

// NewTimer returns a timer driven by Advance. A non-positive d fires at the
// next Advance (of any amount).
func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

type fakeTimer struct {
	f    *Fake
	when time.Time // guarded by f.mu
	c    chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Reset(d time.Duration) {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.drainLocked()
	t.when = t.f.now.Add(d)
	t.f.timers[t] = struct{}{}
}

func (t *fakeTimer) Stop() {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.drainLocked()
	delete(t.f.timers, t)
}

// drainLocked drops a fired value nobody received, as time.Timer does on
// Reset and Stop since Go 1.23.
func (t *fakeTimer) drainLocked() {
	select {
	case <-t.c:
	default:
	}
}

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTicker returns a ticker driven by Advance.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive ticker interval")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTicker{f: f, d: d, next: f.now.Add(d), c: make(chan time.Time, 1)}
	f.tickers[t] = struct{}{}
	return t
}

// Advance moves the clock forward by d, firing due tickers.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	for t := range f.tickers {
		for !t.next.After(f.now) {
			select {
			case t.c <- t.next:
			default:
			}
			t.next = t.next.Add(t.d)
		}
	}
	for t := range f.timers {
		if !t.when.After(f.now) {
			delete(f.timers, t)
			select {
			case t.c <- t.when:
			default:
			}
		}
	}
}

type fakeTicker struct {
	f    *Fake
	d    time.Duration
	next time.Time // guarded by f.mu
	c    chan time.Time
}

func (t *fakeTicker) C() <-chan time.Time { return t.c }

func (t *fakeTicker) Stop() {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	delete(t.f.tickers, t)
}

// String describes the fake clock and its tickers, for test failure messages.
func (f *Fake) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := "now " + f.now.Format("15:04:05.000") + "; tickers:"
	for t := range f.tickers {
		s += " " + t.d.String() + "→" + t.next.Format("15:04:05.000")
	}
	return s
}
