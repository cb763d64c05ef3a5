// Command example shows aegisgrpc on loopback: three grpc-go servers (the
// standard health service) each register an instance of "greeter" through
// an Aegis node of their own, for discovery and health only; a client node
// calls them in a loop through aegisgrpc.Dial; one server and its node are
// killed mid-run. It prints successes and failures per second and exits
// non-zero if any RPC failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/aegisipc/aegis"
	aegisgrpc "github.com/aegisipc/aegis/integrations/grpc"
)

func main() {
	callers := flag.Int("callers", 8, "concurrent callers")
	duration := flag.Duration("duration", 5*time.Second, "how long callers run")
	killAt := flag.Duration("kill-at", 2*time.Second, "when to kill one server")
	flag.Parse()
	if err := run(*callers, *duration, *killAt); err != nil {
		fmt.Fprintln(os.Stderr, "example FAILED:", err)
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

// server is one grpc server and the Aegis node that announces it.
type server struct {
	node *aegis.Node
	grpc *grpc.Server
}

func (s *server) kill() {
	s.grpc.Stop()
	_ = s.node.Shutdown()
}

// startServer serves the health service on a free loopback port and
// registers it as an instance of "greeter" advertising that port.
func startServer(i int, seed string) (*server, error) {
	node, err := newNode(fmt.Sprintf("server-%d", i))
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = node.Shutdown()
		return nil, err
	}
	s := &server{node: node, grpc: grpc.NewServer()}
	healthpb.RegisterHealthServer(s.grpc, health.NewServer())
	go func() { _ = s.grpc.Serve(lis) }()
	ctx := context.Background()
	if _, err := node.Join(ctx, seed); err != nil {
		s.kill()
		return nil, err
	}
	_, err = node.Register(ctx, aegis.Service{Name: "greeter", InstanceID: fmt.Sprintf("greeter-%d", i),
		Endpoints: map[string]string{"grpc": lis.Addr().String()}})
	if err != nil {
		s.kill()
		return nil, err
	}
	return s, nil
}

func run(callers int, duration, killAt time.Duration) error {
	client, err := newNode("client")
	if err != nil {
		return err
	}
	defer client.Shutdown()
	var servers []*server
	defer func() {
		for _, s := range servers {
			s.kill()
		}
	}()
	for i := 0; i < 3; i++ {
		s, err := startServer(i, client.Addr())
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}
	for deadline := time.Now().Add(10 * time.Second); len(client.HealthyInstances("greeter")) < 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the client never saw 3 instances")
		}
	}
	cc, err := aegisgrpc.Dial(client, "greeter",
		aegisgrpc.WithDialOptions(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		return err
	}
	defer cc.Close()
	fmt.Printf("3 instances of greeter up; %d callers for %v; server-2 is killed at %v\n", callers, duration, killAt)
	return drive(healthpb.NewHealthClient(cc), callers, duration, killAt, servers[2].kill)
}

// counts are the callers' totals.
type counts struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
}

// call runs RPCs in a loop until stop is closed.
func (c *counts) call(client healthpb.HealthClient, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			c.failed.Add(1)
			c.firstErr.CompareAndSwap(nil, err)
		} else {
			c.ok.Add(1)
		}
	}
}

// drive runs the callers for duration, calls kill at killAt, prints a line
// a second and fails if any RPC failed.
func drive(client healthpb.HealthClient, callers int, duration, killAt time.Duration, kill func()) error {
	var c counts
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() { defer wg.Done(); c.call(client, stop) }()
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	killT, end := time.After(killAt), time.After(duration)
	var lastOK, lastFailed int64
	lastAt := start
	report := func() {
		if time.Since(lastAt) < 100*time.Millisecond {
			return // the tick and the end at once
		}
		lastAt = time.Now()
		o, f := c.ok.Load(), c.failed.Load()
		fmt.Printf("%5.2fs  ok %7d  failed %d\n", time.Since(start).Seconds(), o-lastOK, f-lastFailed)
		lastOK, lastFailed = o, f
	}
	killed := false
	for done := false; !done; {
		select {
		case <-tick.C:
			report()
		case <-killT:
			kill()
			killed = true
			fmt.Printf("%5.2fs  server-2 killed (grpc server stopped, its Aegis node crashed)\n", time.Since(start).Seconds())
		case <-end:
			report()
			done = true
		}
	}
	close(stop)
	wg.Wait()
	fmt.Printf("total: %d RPCs succeeded, %d failed\n", c.ok.Load(), c.failed.Load())
	if f := c.failed.Load(); f > 0 {
		return fmt.Errorf("%d RPCs failed, first: %v", f, c.firstErr.Load())
	}
	if !killed {
		return fmt.Errorf("the run ended before the kill")
	}
	return nil
}
