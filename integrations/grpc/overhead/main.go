// Command overhead measures what aegisgrpc costs against plain grpc-go
// dialing a static address: the same health-check RPC to the same
// loopback server, once through grpc.NewClient("127.0.0.1:PORT") and once
// through aegisgrpc.Dial to the server registered as the only instance;
// a third time through aegisgrpc.Dial with its retry policy off
// (WithMaxAttempts(1)), and a fourth through a second plain client, a
// control whose difference from the first is noise. The variants take
// turns in one run, every 64 sequential RPCs for latency (p50) and every
// 50 ms for throughput (concurrent callers), each going first in turn, so
// that the drift of a shared machine hits them alike.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/aegisipc/aegis"
	aegisgrpc "github.com/aegisipc/aegis/integrations/grpc"

	"github.com/aegisipc/aegis/internal/overhead"
)

func main() {
	rounds := flag.Int("rounds", 10, "measurement rounds")
	calls := flag.Int("calls", 2000, "sequential RPCs per variant per round (latency)")
	phase := flag.Duration("tput", 2*time.Second, "throughput time per variant per round")
	conc := flag.Int("conc", 8, "concurrent callers (throughput)")
	flag.Parse()
	if err := run(*rounds, *calls, *phase, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "overhead:", err)
		os.Exit(1)
	}
}

func run(rounds, calls int, phase time.Duration, conc int) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	cfg := aegis.DefaultConfig()
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Gossip = aegis.LocalGossip()
	node, err := aegis.New(cfg)
	if err != nil {
		return err
	}
	defer node.Shutdown()
	if _, err := node.Register(context.Background(), aegis.Service{Name: "health", InstanceID: "health-1",
		Endpoints: map[string]string{"grpc": lis.Addr().String()}}); err != nil {
		return err
	}
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	plain, err := grpc.NewClient(lis.Addr().String(), creds)
	if err != nil {
		return err
	}
	defer plain.Close()
	control, err := grpc.NewClient(lis.Addr().String(), creds)
	if err != nil {
		return err
	}
	defer control.Close()
	viaAegis, err := aegisgrpc.Dial(node, "health", aegisgrpc.WithDialOptions(creds))
	if err != nil {
		return err
	}
	defer viaAegis.Close()
	noRetry, err := aegisgrpc.Dial(node, "health", aegisgrpc.WithDialOptions(creds), aegisgrpc.WithMaxAttempts(1))
	if err != nil {
		return err
	}
	defer noRetry.Close()
	vs := []overhead.Variant{{Name: "grpc-go, static address", Call: checker(plain)},
		{Name: "aegisgrpc.Dial", Call: checker(viaAegis)},
		{Name: "aegisgrpc.Dial, no retries", Call: checker(noRetry)},
		{Name: "grpc-go again (control)", Call: checker(control)}}
	return overhead.Measure(vs, rounds, calls, phase, conc)
}

// checker returns one health-check RPC on cc.
func checker(cc *grpc.ClientConn) func() error {
	c := healthpb.NewHealthClient(cc)
	req := &healthpb.HealthCheckRequest{}
	return func() error {
		_, err := c.Check(context.Background(), req)
		return err
	}
}
