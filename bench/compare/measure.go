package main

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"
)

// result is one measurement of one system.
type result struct {
	calls     int
	elapsed   time.Duration
	p50, p99  time.Duration
	allocs    float64 // process-wide mallocs per call
	perSecond float64
}

// percentile returns the p-quantile (nearest rank) of sorted latencies.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func mallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// checkEcho verifies an echoed payload.
func checkEcho(got, want []byte) error {
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echo mismatch: sent %d bytes, got %d", len(want), len(got))
	}
	return nil
}

// runFor calls call in a loop for d (a warmup), and returns how many
// calls it made.
func runFor(ctx context.Context, call callFn, payload []byte, d time.Duration) (int, error) {
	end := time.Now().Add(d)
	n := 0
	for time.Now().Before(end) {
		out, err := call(ctx, payload)
		if err != nil {
			return n, err
		}
		if err := checkEcho(out, payload); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// estimateSlots sizes a latency slice for d given a warmup of w that made n
// calls, with room to spare so that the measurement never grows it.
func estimateSlots(n int, w, d time.Duration) int {
	if w <= 0 {
		w = time.Millisecond
	}
	return int(float64(n)*float64(d)/float64(w))*3 + 4096
}

// measureLatency makes sequential calls from one goroutine.
func measureLatency(r *running, payloadSize int, warmup, d time.Duration) (result, error) {
	ctx := context.Background()
	call, release, err := r.newCaller()
	if err != nil {
		return result{}, err
	}
	defer release()
	payload := makePayload(payloadSize)
	n, err := runFor(ctx, call, payload, warmup)
	if err != nil {
		return result{}, fmt.Errorf("warmup: %w", err)
	}
	lat := make([]time.Duration, estimateSlots(n, warmup, d))
	runtime.GC()
	m0 := mallocs()
	start := time.Now()
	end := start.Add(d)
	i := 0
	var t0 time.Time
	for i < len(lat) {
		t0 = time.Now()
		if !t0.Before(end) {
			break
		}
		out, err := call(ctx, payload)
		lat[i] = time.Since(t0)
		if err != nil {
			return result{}, err
		}
		if len(out) != len(payload) {
			return result{}, checkEcho(out, payload)
		}
		i++
	}
	elapsed := time.Since(start)
	m1 := mallocs()
	if i == len(lat) {
		return result{}, fmt.Errorf("latency slice of %d entries filled before the end of the run", len(lat))
	}
	return newResult(lat[:i], elapsed, m1-m0), nil
}

// newResult turns the latencies of every call of a run (sorted here), its
// length and the allocations made during it into a result.
func newResult(lat []time.Duration, elapsed time.Duration, mallocs uint64) result {
	slices.Sort(lat)
	return result{
		calls:     len(lat),
		elapsed:   elapsed,
		p50:       percentile(lat, 0.50),
		p99:       percentile(lat, 0.99),
		allocs:    float64(mallocs) / float64(max(len(lat), 1)),
		perSecond: float64(len(lat)) / elapsed.Seconds(),
	}
}

// measureThroughput runs callers goroutines making calls for d.
func measureThroughput(r *running, callers, payloadSize int, warmup, d time.Duration) (result, error) {
	ctx := context.Background()
	type worker struct {
		call    callFn
		release func()
		payload []byte
		warm    int
		lat     []time.Duration
		n       int
		over    []time.Duration // only if lat ever fills up
		err     error
	}
	ws := make([]*worker, callers)
	defer func() {
		for _, w := range ws {
			if w != nil && w.release != nil {
				w.release()
			}
		}
	}()
	for i := range ws {
		call, release, err := r.newCaller()
		if err != nil {
			return result{}, fmt.Errorf("caller %d: %w", i, err)
		}
		ws[i] = &worker{call: call, release: release, payload: makePayload(payloadSize)}
	}

	// Warmup: every caller at once, which also tells how many calls to
	// expect.
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.warm, w.err = runFor(ctx, w.call, w.payload, warmup)
		}()
	}
	wg.Wait()
	total := 0
	for _, w := range ws {
		if w.err != nil {
			return result{}, fmt.Errorf("warmup: %w", w.err)
		}
		total += w.warm
	}
	avg := total / callers
	for _, w := range ws {
		w.lat = make([]time.Duration, estimateSlots(max(w.warm, avg), warmup, d))
	}

	runtime.GC()
	startCh := make(chan struct{})
	var end time.Time
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startCh
			for {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				out, err := w.call(ctx, w.payload)
				l := time.Since(t0)
				if err != nil {
					w.err = err
					return
				}
				if len(out) != len(w.payload) {
					w.err = checkEcho(out, w.payload)
					return
				}
				if w.n < len(w.lat) {
					w.lat[w.n] = l
				} else {
					w.over = append(w.over, l)
				}
				w.n++
			}
		}()
	}
	m0 := mallocs()
	start := time.Now()
	end = start.Add(d)
	close(startCh)
	wg.Wait()
	elapsed := time.Since(start)
	m1 := mallocs()

	var all []time.Duration
	calls, grown := 0, 0
	for _, w := range ws {
		if w.err != nil {
			return result{}, w.err
		}
		calls += w.n
		grown += len(w.over)
	}
	if grown > 0 {
		fmt.Fprintf(logw, "    note: %d latencies did not fit the preallocated slices\n", grown)
	}
	all = make([]time.Duration, 0, calls)
	for _, w := range ws {
		all = append(all, w.lat[:min(w.n, len(w.lat))]...)
		all = append(all, w.over...)
	}
	return newResult(all, elapsed, m1-m0), nil
}

func makePayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}
