// This file tests the load subcommand's statistics.

package main

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{nil, 0.5, 0},
		{ms(7), 0.5, 7 * time.Millisecond},
		{ms(7), 0.99, 7 * time.Millisecond},
		{ms(1, 2), 0.5, 1 * time.Millisecond},
		{ms(1, 2, 3), 0.5, 2 * time.Millisecond},
		{ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{ms(hundred...), 0.5, 50 * time.Millisecond},
		{ms(hundred...), 0.99, 99 * time.Millisecond},
		{ms(hundred...), 1, 100 * time.Millisecond},
		{ms(hundred...), 0.001, 1 * time.Millisecond},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, percentile(tt.sorted, tt.q), "n=%d q=%v", len(tt.sorted), tt.q)
	}
}

func TestAnsweringInstance(t *testing.T) {
	tests := []struct{ answer, want string }{
		{`{"instance":"svc-n1","node":"n1"}`, "svc-n1"},
		{`{"instance":"c","count":3}`, "c"},
		{`hello`, "?"},
		{``, "?"},
		{`{"node":"n1"}`, "?"},
		{`[1]`, "?"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, answeringInstance([]byte(tt.answer)), tt.answer)
	}
}

func TestTallyReport(t *testing.T) {
	var ta tally
	for i := 1; i <= 10; i++ {
		ta.add(time.Duration(i)*time.Millisecond, fmt.Sprintf("i%d", i%2), nil)
	}
	for i := range 8 {
		ta.add(time.Microsecond, "", errors.New("boom "+fmt.Sprint(i%6)))
	}
	r := ta.reset().report("total", 1500*time.Millisecond)
	assert.Equal(t, "total", r.Report)
	assert.Equal(t, 1.5, r.ElapsedS)
	assert.Equal(t, 18, r.Calls)
	assert.Equal(t, 8, r.Errors)
	assert.Equal(t, []string{"boom 0", "boom 1", "boom 2", "boom 3", "boom 4"}, r.ErrorSamples, "the first few distinct texts")
	assert.Equal(t, map[string]int{"i0": 5, "i1": 5}, r.Instances)
	assert.Equal(t, 1.0, r.P50Ms, "eight failed calls of 1µs and ten of 1 to 10ms")
	assert.Equal(t, 10.0, r.P99Ms)
	assert.Equal(t, 10.0, r.MaxMs)

	empty := ta.reset().report("second", time.Second)
	assert.Zero(t, empty.Calls)
	assert.Zero(t, empty.Errors)
	assert.NotNil(t, empty.Instances, "an empty object, not null")
	assert.Zero(t, empty.P99Ms)
}
