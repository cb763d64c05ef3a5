//go:build race

package testutil

// RaceEnabled reports whether the race detector is on. It then drops a
// quarter of what is put into a sync.Pool, so pooled objects are allocated
// again now and then: allocation budgets allow for that.
const RaceEnabled = true
