// Command failover shows instance-level failover on loopback over the real
// network: three nodes each host an instance of service "echo", a fourth
// node runs callers in a loop with CallWithFailover, and one instance's node
// is shut down abruptly mid-run. It prints successes and failures per second
// and the totals, and exits non-zero if CallWithFailover let any call fail.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis"
)

func main() {
	callers := flag.Int("callers", 8, "concurrent callers")
	duration := flag.Duration("duration", 6*time.Second, "how long callers run")
	killAt := flag.Duration("kill-at", 2*time.Second, "when to crash one instance's node")
	flag.Parse()
	if err := run(*callers, *duration, *killAt); err != nil {
		fmt.Fprintln(os.Stderr, "failover FAILED:", err)
		os.Exit(1)
	}
}

func newNode(name string) (*aegis.Node, error) {
	cfg := aegis.DefaultConfig()
	cfg.NodeName = name
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Gossip = aegis.LocalGossip()
	return aegis.New(cfg)
}

func run(callers int, duration, killAt time.Duration) error {
	ctx := context.Background()
	caller, err := newNode("caller")
	if err != nil {
		return err
	}
	defer caller.Shutdown()
	var servers []*aegis.Node
	defer func() {
		for _, s := range servers {
			_ = s.Shutdown()
		}
	}()
	for i := 0; i < 3; i++ {
		s, err := newNode(fmt.Sprintf("server-%d", i))
		if err != nil {
			return err
		}
		servers = append(servers, s)
		if _, err := s.Join(ctx, caller.Addr()); err != nil {
			return err
		}
		id := fmt.Sprintf("echo-%d", i)
		if _, err := s.Register(ctx, aegis.Service{Name: "echo", InstanceID: id,
			Handler: func(ctx context.Context, req *aegis.Request) ([]byte, error) { return req.Payload, nil }}); err != nil {
			return err
		}
	}
	for deadline := time.Now().Add(10 * time.Second); len(caller.HealthyInstances("echo")) < 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the caller never saw 3 instances")
		}
	}
	fmt.Printf("3 instances of echo up; %d callers for %v; server-2 crashes at %v\n", callers, duration, killAt)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := []byte("ping")
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := caller.CallWithFailover(cctx, "echo", "echo", payload)
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	kill := time.NewTimer(killAt)
	defer kill.Stop()
	end := time.NewTimer(duration)
	defer end.Stop()
	killed := false
	var lastOK, lastFailed int64
	report := func() {
		o, f := ok.Load(), failed.Load()
		fmt.Printf("%5.2fs  ok %7d  failed %d\n", time.Since(start).Seconds(), o-lastOK, f-lastFailed)
		lastOK, lastFailed = o, f
	}
loop:
	for {
		select {
		case <-tick.C:
			report()
		case <-kill.C:
			killed = true
			_ = servers[2].Shutdown()
			fmt.Printf("%5.2fs  server-2 shut down abruptly\n", time.Since(start).Seconds())
		case <-end.C:
			report()
			break loop
		}
	}
	close(stop)
	wg.Wait()
	var healthy []string
	for _, in := range caller.HealthyInstances("echo") {
		healthy = append(healthy, in.ID)
	}
	fmt.Printf("total: %d calls succeeded, %d failed; the caller now routes to %v\n", ok.Load(), failed.Load(), healthy)
	if failed.Load() > 0 {
		return fmt.Errorf("%d calls failed, first: %v", failed.Load(), firstErr.Load())
	}
	if !killed {
		return fmt.Errorf("the run ended before the crash")
	}
	return nil
}
