package aegishttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

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

// testServer is a net/http server on loopback that counts requests by
// method, answers with its name, the path and the body it got, and can be
// told to answer with a status or to hang.
type testServer struct {
	name   string
	url    string
	hits   atomic.Int64
	posts  atomic.Int64
	status atomic.Int32 // answer with this status when non-zero
	hang   atomic.Int64 // sleep this many nanoseconds first
	srv    *http.Server
}

func startServer(t testing.TB, name string) *testServer {
	t.Helper()
	s := &testServer{name: name}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 5 * time.Second}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.url = "http://" + lis.Addr().String()
	go func() { _ = s.srv.Serve(lis) }()
	t.Cleanup(s.kill)
	return s
}

func (s *testServer) serve(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	if r.Method == http.MethodPost {
		s.posts.Add(1)
	}
	body, _ := io.ReadAll(r.Body)
	if d := time.Duration(s.hang.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	if st := s.status.Load(); st != 0 {
		w.WriteHeader(int(st))
		return
	}
	_, _ = io.WriteString(w, s.name+" "+r.URL.RequestURI()+" "+string(body))
}

// kill closes the listener and every connection at once.
func (s *testServer) kill() { _ = s.srv.Close() }

// register registers instance id of service "svc" advertising endpoint ep.
func register(t testing.TB, node *aegis.Node, id, ep string) *aegis.Registration {
	t.Helper()
	reg, err := node.Register(context.Background(), aegis.Service{Name: "svc", InstanceID: id,
		Endpoints: map[string]string{"http": ep}})
	require.NoError(t, err)
	return reg
}

func newTransport(t testing.TB, node *aegis.Node, opts ...Option) (*Transport, *http.Client) {
	t.Helper()
	tr := New(node, opts...)
	t.Cleanup(tr.Close)
	return tr, &http.Client{Transport: tr}
}

// routed returns the IDs the transport routes "svc" to now.
func (t *Transport) routed() []string {
	var ids []string
	for _, in := range t.cache.get("svc").insts {
		ids = append(ids, in.ID)
	}
	sort.Strings(ids)
	return ids
}

func waitRouted(t *testing.T, tr *Transport, ids ...string) {
	t.Helper()
	sort.Strings(ids)
	require.Eventually(t, func() bool {
		got := tr.routed()
		if len(got) != len(ids) {
			return false
		}
		for i := range got {
			if got[i] != ids[i] {
				return false
			}
		}
		return true
	}, 5*time.Second, 2*time.Millisecond, "never routed to exactly %v (now %v)", ids, tr.routed())
}

// get sends n GETs and requires each to answer 200.
func get(t *testing.T, c *http.Client, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		resp, err := c.Get("http://svc.aegis/x")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
}

// do sends req and returns its status and body.
func do(c *http.Client, req *http.Request) (int, string, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func resetHits(servers ...*testServer) {
	for _, s := range servers {
		s.hits.Store(0)
		s.posts.Store(0)
	}
}

func totalPosts(servers ...*testServer) int64 {
	var n int64
	for _, s := range servers {
		n += s.posts.Load()
	}
	return n
}
