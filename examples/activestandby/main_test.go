package main

import (
	"strings"
	"testing"
)

// TestRun runs the example: three nodes on loopback, the active's node
// crashes mid-run, a standby is promoted, and run fails if a call failed or
// two instances answered as the active at once.
func TestRun(t *testing.T) {
	var out strings.Builder
	err := run(&out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"last call answered by the old active: ledger-0@1",
		"OnRoleChange: now active, epoch 2 (promoted)", "first call answered by the new active", " 0 failed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the output lacks %q", want)
		}
	}
}
