package main

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

// variant is one way of making the same call.
type variant struct {
	name string
	call func() error
}

// totals are one variant's figures over every round.
type totals struct {
	lat   []time.Duration
	done  int64
	spent time.Duration
}

// measure runs warm-up then rounds of interleaved latency and throughput
// turns, and prints p50 and throughput per variant and the overhead of
// each against the first.
func measure(vs []variant, rounds, calls int, tputPerRound time.Duration, conc int) error {
	t := make([]totals, len(vs))
	for _, v := range vs { // warm-up: connections, pickers, caches
		for i := 0; i < 200; i++ {
			if err := v.call(); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
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
func latencyRound(vs []variant, t []totals, calls int) error {
	for done, b := 0, 0; done < calls; done, b = done+latencyBlock, b+1 {
		for j := range vs {
			i := (j + b) % len(vs) // each variant goes first in turn
			v := vs[i]
			for k := 0; k < latencyBlock; k++ {
				start := time.Now()
				if err := v.call(); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
				t[i].lat = append(t[i].lat, time.Since(start))
			}
		}
	}
	return nil
}

// tputRound runs conc callers for tputPerRound per variant, the variants
// taking turns every tputTurn; a call counts for the variant it used.
func tputRound(vs []variant, t []totals, tputPerRound time.Duration, conc int) error {
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
				if err := vs[i].call(); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", vs[i].name, err))
					return
				}
				counts[i].Add(1)
			}
		}()
	}
	for spent, b := time.Duration(0), 0; spent < tputPerRound; spent, b = spent+tputTurn, b+1 {
		for j := range vs {
			i := (j + b) % len(vs) // each variant goes first in turn
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

func report(vs []variant, t []totals, rounds, calls int, tputPerRound time.Duration, conc int) {
	fmt.Printf("%d rounds: %d sequential calls per variant (turns of %d), then %v per variant with %d callers (turns of %v)\n",
		rounds, calls, latencyBlock, tputPerRound, conc, tputTurn)
	base50, baseTput := 0.0, 0.0
	for i, v := range vs {
		slices.Sort(t[i].lat)
		p50 := float64(t[i].lat[len(t[i].lat)/2]) / float64(time.Microsecond)
		tput := float64(t[i].done) / t[i].spent.Seconds()
		if i == 0 {
			base50, baseTput = p50, tput
			fmt.Printf("%-28s p50 %7.1f µs  throughput %9.0f calls/s\n", v.name, p50, tput)
			continue
		}
		fmt.Printf("%-28s p50 %7.1f µs  throughput %9.0f calls/s  (p50 %+.1f%%, throughput %+.1f%%)\n",
			v.name, p50, tput, 100*(p50/base50-1), 100*(tput/baseTput-1))
	}
}
