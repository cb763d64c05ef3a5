// Package testutil holds helpers shared by Aegis tests.
package testutil

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// Eventually polls cond every few milliseconds until it returns true or
// timeout passes, then fails the test with the message. It never sleeps
// longer than needed.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.Millisecond
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			if os.Getenv("AEGIS_TEST_STACKS") != "" {
				buf := make([]byte, 1<<22)
				os.Stderr.Write(buf[:runtime.Stack(buf, true)])
			}
			t.Fatalf("not true after %v: %s", timeout, fmt.Sprintf(format, args...))
		}
		time.Sleep(tick)
		if tick < 20*time.Millisecond {
			tick *= 2
		}
	}
}
