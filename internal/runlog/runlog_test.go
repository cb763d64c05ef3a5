package runlog

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "runs")
	w, err := Create(path)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() { assert.NoError(t, w.Write(Run{Instance: "a", Run: int64(i + 1), Method: "m", MessageID: "x"})) })
	}
	wg.Wait()
	require.NoError(t, w.Close())
	runs, err := Read[Run](path)
	require.NoError(t, err)
	require.Len(t, runs, 100, "every line whole")
	seen := map[int64]bool{}
	for _, r := range runs {
		seen[r.Run] = true
	}
	assert.Len(t, seen, 100)

	// A writer killed mid-line leaves an unterminated tail, which is not
	// a run; a bad whole line is an error.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"instance":"a","ru`)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	runs, err = Read[Run](path)
	require.NoError(t, err)
	assert.Len(t, runs, 100)
	require.NoError(t, os.WriteFile(path, []byte("{}\nnot json\n"), 0o644))
	_, err = Read[Run](path)
	assert.ErrorContains(t, err, "line 2")
}

func TestCheck(t *testing.T) {
	bounds := Bounds{NonIdempotent: func(m string) bool { return m == "once" }, MaxRuns: 3, PerInstance: 1}
	acked := func(id, method, inst string, run int64) Call {
		return Call{MessageID: id, Method: method, Instance: inst, Run: run}
	}
	failed := func(id, method string) Call { return Call{MessageID: id, Method: method, Err: "boom"} }
	run := func(inst string, n int64, method, id string) Run {
		return Run{Instance: inst, Run: n, Method: method, MessageID: id}
	}
	tests := []struct {
		name    string
		calls   []Call
		runs    []Run
		wantOK  bool
		problem string
	}{
		{"each acknowledged call ran once", []Call{acked("1", "inc", "a", 1), acked("2", "once", "b", 1), failed("3", "inc")},
			[]Run{run("a", 1, "inc", "1"), run("b", 1, "once", "2")}, true, ""},
		{"a failed call may have run", []Call{failed("1", "once"), failed("2", "inc")},
			[]Run{run("a", 1, "once", "1"), run("a", 2, "inc", "2"), run("b", 1, "inc", "2")}, true, ""},
		{"idempotent call hedged onto other instances", []Call{acked("1", "inc", "b", 1)},
			[]Run{run("a", 1, "inc", "1"), run("b", 1, "inc", "1"), run("c", 1, "inc", "1")}, true, ""},
		{"acknowledged but never ran", []Call{acked("1", "inc", "a", 1)}, nil, false, "no run of its message ID"},
		{"answer carries another call's run", []Call{acked("1", "inc", "a", 1), acked("2", "inc", "a", 1)},
			[]Run{run("a", 1, "inc", "1"), run("a", 2, "inc", "2")}, false, "call 2 (inc) was acknowledged with run 1"},
		{"answer from an instance that did not run it", []Call{acked("1", "inc", "b", 1)},
			[]Run{run("a", 1, "inc", "1")}, false, "no run of its message ID"},
		{"non-idempotent ran twice", []Call{acked("1", "once", "a", 1)},
			[]Run{run("a", 1, "once", "1"), run("b", 1, "once", "1")}, false, "non-idempotent call 1 (once) ran 2 times"},
		{"non-idempotent failed call ran twice", []Call{failed("1", "once")},
			[]Run{run("a", 1, "once", "1"), run("b", 1, "once", "1")}, false, "ran 2 times"},
		{"idempotent over the total", []Call{failed("1", "inc")},
			[]Run{run("a", 1, "inc", "1"), run("b", 1, "inc", "1"), run("c", 1, "inc", "1"), run("d", 1, "inc", "1")}, false, "more than the 3 allowed"},
		{"idempotent twice on one instance", []Call{acked("1", "inc", "a", 2)},
			[]Run{run("a", 1, "inc", "1"), run("a", 2, "inc", "1")}, false, "ran 2 times on a"},
		{"run of an unknown message ID", []Call{acked("1", "inc", "a", 1)},
			[]Run{run("a", 1, "inc", "1"), run("a", 2, "inc", "9")}, false, `"9" (run 2), which no call had`},
		{"run under another method", []Call{acked("1", "inc", "a", 1)},
			[]Run{run("a", 1, "once", "1")}, false, `as method "once"`},
		{"two calls with one message ID", []Call{acked("1", "inc", "a", 1), acked("1", "inc", "a", 1)},
			[]Run{run("a", 1, "inc", "1")}, false, "another call's"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Check(tt.calls, tt.runs, bounds)
			assert.Equal(t, tt.wantOK, r.OK(), "%s: %v", r, r.Problems)
			if tt.problem != "" {
				require.NotEmpty(t, r.Problems)
				assert.Contains(t, r.Problems[0], tt.problem)
			}
		})
	}

	r := Check([]Call{acked("1", "inc", "b", 1), failed("2", "once")},
		[]Run{run("a", 1, "inc", "1"), run("b", 1, "inc", "1")}, bounds)
	assert.Equal(t, Report{Calls: 2, Acked: 1, Failed: 1, Runs: 2, Repeated: 1, MostRuns: 2}, *r)
}
