// Package budget implements the retry budget that bounds how many retries
// failover may add on top of the calls callers make.
package budget

import (
	"sync/atomic"
	"time"
)

// Budget allows retries up to a ratio of calls plus a floor per second, as
// Finagle's RetryBudget does: when every instance fails, failover adds at
// most about ratio × load instead of multiplying it. It is safe for
// concurrent use and takes no lock.
type Budget struct {
	perCall  int64 // milli-tokens deposited per call
	capacity int64 // milli-tokens banked at most
	floor    int64 // retries always allowed per second
	now      func() time.Time

	tokens   atomic.Int64
	floorSec atomic.Int64 // the second floorN counts in (unix seconds of now)
	floorN   atomic.Int64
}

// New returns a Budget granting ratio retries per call (0 to 1) plus
// floorPerSec retries each second of now's clock, whatever the calls. At
// most ten seconds' worth of floor, or 100 retries, are banked.
func New(ratio float64, floorPerSec int, now func() time.Time) *Budget {
	b := &Budget{perCall: int64(ratio * 1000), floor: int64(floorPerSec), now: now}
	b.capacity = max(100, 10*b.floor) * 1000
	return b
}

// Deposit credits one call.
func (b *Budget) Deposit() {
	if b.tokens.Add(b.perCall) > b.capacity {
		b.tokens.Store(b.capacity)
	}
}

// Withdraw takes one retry from the budget; false means the budget is
// spent and the caller must not retry.
func (b *Budget) Withdraw() bool {
	for {
		t := b.tokens.Load()
		if t < 1000 {
			break
		}
		if b.tokens.CompareAndSwap(t, t-1000) {
			return true
		}
	}
	sec := b.now().Unix()
	if old := b.floorSec.Load(); old != sec && b.floorSec.CompareAndSwap(old, sec) {
		b.floorN.Store(0)
	}
	return b.floorN.Add(1) <= b.floor
}
