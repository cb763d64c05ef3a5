// Command quickstart runs three Aegis nodes on loopback over the real
// network, each hosting one instance of service "greeter", and shows the
// cluster core at work: membership converging, an instance whose heartbeats
// stop going unhealthy everywhere and recovering when they resume, and the
// node-failed path when a node crashes.
//
// Timeouts are shortened (heartbeat 200ms, timeout 2s, LocalGossip) so the
// whole run takes a few seconds. It exits non-zero if what it shows did not
// happen.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart FAILED:", err)
		os.Exit(1)
	}
	fmt.Println("quickstart OK")
}

func run() error {
	ctx := context.Background()
	start := time.Now()
	fmt.Println("settings (shortened for the demo): heartbeat every 200ms, unhealthy after 2s without one, gossip profile LocalGossip")

	var nodes []*aegis.Node
	var regs []*aegis.Registration
	defer func() {
		for _, n := range nodes {
			_ = n.Shutdown()
		}
	}()
	for i := 0; i < 3; i++ {
		cfg := aegis.DefaultConfig()
		cfg.NodeName = fmt.Sprintf("node-%d", i)
		cfg.BindAddr = "127.0.0.1:0"
		cfg.Gossip = aegis.LocalGossip()
		cfg.HeartbeatInterval = 200 * time.Millisecond
		cfg.HeartbeatTimeout = 2 * time.Second
		cfg.HealthCheckInterval = 100 * time.Millisecond
		n, err := aegis.New(cfg)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		if i > 0 {
			if _, err := n.Join(ctx, nodes[0].Addr()); err != nil {
				return err
			}
		}
		reg, err := n.Register(ctx, aegis.Service{
			Name:       "greeter",
			InstanceID: fmt.Sprintf("greeter-%d", i),
			Handler: func(ctx context.Context, req *aegis.Request) ([]byte, error) {
				return append([]byte("hello, "), req.Payload...), nil
			},
		})
		if err != nil {
			return err
		}
		regs = append(regs, reg)
		fmt.Printf("%6s  %s started on %s and registered %s\n", since(start), n.Name(), n.Addr(), reg.Instance().ID)
	}
	// Print every node's view of a status change as it happens.
	for _, n := range nodes {
		name := n.Name()
		cancel := n.Subscribe(func(e aegis.Event) {
			if e.Type == aegis.EventStatusChanged {
				fmt.Printf("%6s    event on %s: %s %s -> %s (%s)\n", since(start), name, e.Instance.ID, e.OldStatus, e.NewStatus, e.Reason)
			}
		})
		defer cancel()
	}

	fmt.Println("\n1. membership converges")
	if err := waitFor(10*time.Second, func() bool { return allSee(nodes, 3) }); err != nil {
		return fmt.Errorf("membership did not converge: %w", err)
	}
	printViews(start, nodes)

	fmt.Println("\n2. greeter-0 stops sending heartbeats (its node stays up)")
	regs[0].PauseHeartbeats()
	if err := waitFor(10*time.Second, func() bool { return allStatus(nodes, "greeter-0", aegis.StatusUnhealthy) }); err != nil {
		return fmt.Errorf("greeter-0 was not marked unhealthy everywhere: %w", err)
	}
	for _, n := range nodes {
		for _, in := range n.HealthyInstances("greeter") {
			if in.ID == "greeter-0" {
				return fmt.Errorf("%s still routes to greeter-0", n.Name())
			}
		}
	}
	printViews(start, nodes)

	fmt.Println("\n3. greeter-0 resumes heartbeats")
	regs[0].ResumeHeartbeats()
	if err := waitFor(10*time.Second, func() bool { return allSee(nodes, 3) }); err != nil {
		return fmt.Errorf("greeter-0 did not recover: %w", err)
	}
	printViews(start, nodes)

	fmt.Println("\n4. node-2 crashes (abrupt Shutdown)")
	crashed := time.Now()
	if err := nodes[2].Shutdown(); err != nil {
		return err
	}
	live := nodes[:2]
	if err := waitFor(20*time.Second, func() bool { return allStatus(live, "greeter-2", aegis.StatusUnhealthy) }); err != nil {
		return fmt.Errorf("greeter-2 was not marked unhealthy after its node crashed: %w", err)
	}
	fmt.Printf("%6s  greeter-2 unhealthy on every live node %v after the crash\n", since(start), time.Since(crashed).Round(time.Millisecond))
	printViews(start, live)
	return nil
}

func since(t time.Time) string { return fmt.Sprintf("%.2fs", time.Since(t).Seconds()) }

func waitFor(limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// allSee reports whether every node sees want healthy greeter instances.
func allSee(nodes []*aegis.Node, want int) bool {
	for _, n := range nodes {
		if len(n.HealthyInstances("greeter")) != want {
			return false
		}
	}
	return true
}

func allStatus(nodes []*aegis.Node, id string, st aegis.Status) bool {
	for _, n := range nodes {
		found := false
		for _, in := range n.Instances("greeter") {
			if in.ID == id {
				found = in.Status == st
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func printViews(start time.Time, nodes []*aegis.Node) {
	for _, n := range nodes {
		var parts []string
		for _, in := range n.Instances("greeter") {
			parts = append(parts, fmt.Sprintf("%s=%s", in.ID, in.Status))
		}
		fmt.Printf("%6s  %s sees: %s\n", since(start), n.Name(), strings.Join(parts, " "))
	}
}
