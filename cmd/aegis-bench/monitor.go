package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aegisipc/aegis"
)

// health is what watch reads off a cluster at one moment.
type health struct {
	at                 time.Time
	cpu                time.Duration // process user+system time
	busy               time.Duration // machineBusy
	nodes              int           // nodes started
	minAlive, maxAlive int           // members a node sees alive, itself included
	failed             int           // failed members, summed over nodes
	dropped            uint64        // in-memory packets dropped at full receivers
	stats              aegis.Stats   // summed over nodes
	goroutines         int
	heapMB             float64
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// health reads the cluster's state; members is the costly part (every
// node's member list), so it is skipped unless asked for.
func (c *cluster) health(members bool) health {
	h := health{at: time.Now(), cpu: processCPU(), busy: machineBusy(), minAlive: -1}
	var started []*aegis.Node
	for _, nd := range c.nodes {
		if nd != nil {
			started = append(started, nd)
		}
	}
	h.nodes = len(started)
	h.stats = sumStats(started)
	for _, nd := range started {
		h.stats.Reconnects += nd.Stats().Reconnects
	}
	for _, m := range c.mems {
		if m != nil {
			h.dropped += m.DroppedPackets()
		}
	}
	if members {
		for _, nd := range started {
			alive := 0
			for _, m := range nd.Members() {
				if m.State == aegis.MemberAlive {
					alive++
				} else {
					h.failed++
				}
			}
			if h.minAlive < 0 || alive < h.minAlive {
				h.minAlive = alive
			}
			h.maxAlive = max(h.maxAlive, alive)
		}
	}
	h.goroutines = runtime.NumGoroutine()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h.heapMB = float64(ms.HeapAlloc) / (1 << 20)
	return h
}

// watch prints a line on stderr every period about how the cluster is
// doing (CPU use, members seen alive, packets dropped, repair and pull
// activity) until the returned function is called.
func (c *cluster) watch(period time.Duration) (stop func()) {
	if period <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(period)
		defer t.Stop()
		prev := c.health(false)
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			t0 := time.Now()
			h := c.health(watchMembers)
			took := time.Since(t0)
			secs := h.at.Sub(prev.at).Seconds()
			d := statsDelta(prev.stats, h.stats)
			progress("  watch: CPU %.0f%% (others %.0f%%), %d nodes, alive seen %d..%d, failed %d, dropped %d, reconnects %d, unknown beats %d, wants %d, repairs %d, gossip recv/s %.0f, goroutines %d, heap %.0f MB (read in %v)",
				100*(h.cpu-prev.cpu).Seconds()/secs, 100*otherCPU(prev.busy, h.busy, prev.cpu, h.cpu, secs), h.nodes, h.minAlive, h.maxAlive, h.failed,
				h.dropped-prev.dropped, h.stats.Reconnects-prev.stats.Reconnects, d.HeartbeatsUnknown,
				d.HeartbeatWants, d.HeartbeatRepairs, float64(d.GossipReceived)/secs, h.goroutines, h.heapMB, roundD(took))
			prev = h
			if c.logs != nil {
				if w := c.logs.take(4); len(w) > 0 {
					progress("  watch: warnings logged: %s", strings.Join(w, ", "))
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// String is for progress lines.
func (h health) String() string {
	return fmt.Sprintf("%d nodes, alive seen %d..%d, failed %d", h.nodes, h.minAlive, h.maxAlive, h.failed)
}

// watchEvery is the period of watch lines; 0 turns them off.
var watchEvery = 5 * time.Second

// watchMembers makes watch read every node's member list too.
var watchMembers = true

// machineBusy is the CPU time all processes of this machine have used
// (from /proc/stat, in USER_HZ = 100 ticks a second), or -1 where it
// cannot be read. Less this process's own CPU over a window, it tells
// whether something else competed for the cores meanwhile.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return -1
	}
	var busy int64
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return -1
		}
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is in user already
			continue
		}
		busy += v
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

// otherCPU is what machineBusy says other processes used between two
// readings, as a share of one core: busy is machineBusy, own this
// process's CPU time, both at the start and end of a window of secs.
func otherCPU(busy0, busy1, own0, own1 time.Duration, secs float64) float64 {
	if busy0 < 0 || busy1 < 0 || secs <= 0 {
		return -1
	}
	return max(0, ((busy1-busy0)-(own1-own0)).Seconds()/secs)
}
