package aegisgrpc

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// BenchmarkCheck compares one health-check RPC through plain grpc-go to a
// static address with the same RPC through Dial (the server registered as
// the only instance). go run ./overhead measures the same in one
// interleaved run with p50 and throughput.
func BenchmarkCheck(b *testing.B) {
	node := newNode(b, time.Second)
	s := startServer(b)
	register(b, node, "s0", s.addr)
	plain, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(b, err)
	defer plain.Close()
	cc, err := Dial(node, "svc", WithDialOptions(grpc.WithTransportCredentials(insecure.NewCredentials())))
	require.NoError(b, err)
	defer cc.Close()
	for _, c := range []struct {
		name string
		cc   *grpc.ClientConn
	}{{"plain", plain}, {"aegis", cc}} {
		client := healthpb.NewHealthClient(c.cc)
		b.Run(c.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, err := client.Check(context.Background(), &healthpb.HealthCheckRequest{})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
