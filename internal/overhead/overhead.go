// Package overhead measures what a client integration adds to a plain
// client: variants of the same call take interleaved latency and
// throughput turns, and the report prints each one's p50 and throughput
// against the first. The integrations' overhead programs share it.
package overhead

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	latencyBlock = 64                    // sequential calls per variant turn
	tputTurn     = 50 * time.Millisecond // length of a throughput turn
)

// Variant is one way of making the same call.
type Variant struct {
	Name string
	Call func() error
}

// totals are one Variant's figures over every round.
type totals struct {
	lat   []time.Duration
	done  int64
	spent time.Duration
}

// Measure runs warm-up then rounds of interleaved latency and throughput
// turns, and prints p50 and throughput per variant and the overhead of
// each against the first.
func Measure(vs []Variant, rounds, calls int, tputPerRound time.Duration, conc int) error {
	t := make([]totals, len(vs))
	for _, v := range vs { // warm-up: connections, pickers, caches
		for i := 0; i < 200; i++ {
			if err := v.Call(); err != nil {
				return fmt.Errorf("%s: %w", v.Name, err)
			}
		}
	}
	for r := 0; r < rounds; r++ {
		if err := latencyRound(vs, t, calls); err != nil {
			return err
		}
		if err := tputRound(vs, t, tputPerRound, conc); err != nil {
			return err
		}
	}
	report(vs, t, rounds, calls, tputPerRound, conc)
	return nil
}

// latencyRound makes calls sequential calls per variant, the variants
// taking turns every latencyBlock calls, each going first in turn.
func latencyRound(vs []Variant, t []totals, calls int) error {
	for done, b := 0, 0; done < calls; done, b = done+latencyBlock, b+1 {
		for j := range vs {
			i := (j + b) % len(vs) // each Variant goes first in turn
			v := vs[i]
			for k := 0; k < latencyBlock; k++ {
				start := time.Now()
				if err := v.Call(); err != nil {
					return fmt.Errorf("%s: %w", v.Name, err)
				}
				t[i].lat = append(t[i].lat, time.Since(start))
			}
		}
	}
	return nil
}

// tputRound runs conc callers for tputPerRound per variant, the variants
// taking turns every tputTurn; a call counts for the variant it used.
func tputRound(vs []Variant, t []totals, tputPerRound time.Duration, conc int) error {
	var cur atomic.Int32
	var stop atomic.Bool
	counts := make([]atomic.Int64, len(vs))
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				i := cur.Load()
				if err := vs[i].Call(); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", vs[i].Name, err))
					return
				}
				counts[i].Add(1)
			}
		}()
	}
	for spent, b := time.Duration(0), 0; spent < tputPerRound; spent, b = spent+tputTurn, b+1 {
		for j := range vs {
			i := (j + b) % len(vs) // each Variant goes first in turn
			cur.Store(int32(i))
			start := time.Now()
			time.Sleep(tputTurn)
			t[i].spent += time.Since(start)
		}
	}
	stop.Store(true)
	wg.Wait()
	for i := range vs {
		t[i].done += counts[i].Load()
	}
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}

func report(vs []Variant, t []totals, rounds, calls int, tputPerRound time.Duration, conc int) {
	fmt.Printf("%d rounds: %d sequential calls per variant (turns of %d), then %v per variant with %d callers (turns of %v)\n",
		rounds, calls, latencyBlock, tputPerRound, conc, tputTurn)
	base50, baseTput := 0.0, 0.0
	for i, v := range vs {
		slices.Sort(t[i].lat)
		p50 := float64(t[i].lat[len(t[i].lat)/2]) / float64(time.Microsecond)
		tput := float64(t[i].done) / t[i].spent.Seconds()
		if i == 0 {
			base50, baseTput = p50, tput
			fmt.Printf("%-28s p50 %7.1f µs  throughput %9.0f calls/s\n", v.Name, p50, tput)
			continue
		}
		fmt.Printf("%-28s p50 %7.1f µs  throughput %9.0f calls/s  (p50 %+.1f%%, throughput %+.1f%%)\n",
			v.Name, p50, tput, 100*(p50/base50-1), 100*(tput/baseTput-1))
	}
}
