package aegisgrpc

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/aegisipc/aegis"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newNode starts an Aegis node on loopback with short timings.
func newNode(t testing.TB, ejectBase time.Duration) *aegis.Node {
	t.Helper()
	cfg := aegis.DefaultConfig()
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Gossip = aegis.LocalGossip()
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.HeartbeatTimeout = time.Second
	cfg.HealthCheckInterval = 50 * time.Millisecond
	cfg.EjectBaseTime = ejectBase
	cfg.EjectMaxTime = 10 * ejectBase
	node, err := aegis.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = node.Shutdown() })
	return node
}

// testServer is a grpc server with the health service that counts the
// RPCs it receives and can be told to answer Unavailable.
type testServer struct {
	addr        string
	hits        atomic.Int64
	unavailable atomic.Bool
	srv         *grpc.Server
}

func startServer(t testing.TB) *testServer {
	t.Helper()
	s := &testServer{}
	s.srv = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo,
		h grpc.UnaryHandler) (any, error) {
		s.hits.Add(1)
		if s.unavailable.Load() {
			return nil, status.Error(codes.Unavailable, "told to refuse")
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(s.srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.addr = lis.Addr().String()
	go func() { _ = s.srv.Serve(lis) }()
	t.Cleanup(s.srv.Stop)
	return s
}

// register registers instance id of service "svc" advertising grpc addr.
func register(t testing.TB, node *aegis.Node, id, addr string) *aegis.Registration {
	t.Helper()
	reg, err := node.Register(context.Background(), aegis.Service{Name: "svc", InstanceID: id,
		Endpoints: map[string]string{"grpc": addr}})
	require.NoError(t, err)
	return reg
}

// dialTest dials "svc" and returns the client and its builder.
func dialTest(t *testing.T, node *aegis.Node, opts ...Option) (*grpc.ClientConn, *Builder) {
	t.Helper()
	b := NewBuilder(node, opts...)
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	cc, err := grpc.NewClient("aegis:///svc", grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(ServiceConfig(o.maxAttempts)),
		grpc.WithChainUnaryInterceptor(UnaryInterceptor),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	return cc, b
}

// live returns the live set of the builder's newest resolver (nil before
// one was built).
func (b *Builder) live() map[string]string {
	st := b.last.Load()
	if st == nil {
		return nil
	}
	return st.live.Load().addrs
}

// waitLive waits until the client's resolver routes to exactly ids.
func waitLive(t *testing.T, b *Builder, ids ...string) {
	t.Helper()
	require.Eventually(t, func() bool {
		l := b.live()
		if len(l) != len(ids) {
			return false
		}
		for _, id := range ids {
			if _, ok := l[id]; !ok {
				return false
			}
		}
		return true
	}, 5*time.Second, 5*time.Millisecond, "live set never became %v (is %v)", ids, b.live())
}

// check runs n health checks and requires every one to succeed.
func check(t *testing.T, cc *grpc.ClientConn, n int) {
	t.Helper()
	c := healthpb.NewHealthClient(cc)
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		require.NoError(t, err)
	}
}

func resetHits(servers ...*testServer) {
	for _, s := range servers {
		s.hits.Store(0)
	}
}
