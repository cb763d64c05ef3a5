package aegisgrpc

import (
	"context"
	"net/url"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/resolver"

	"github.com/aegisipc/aegis"
)

// fakeCC records the address lists a resolver sends.
type fakeCC struct {
	resolver.ClientConn
	mu    sync.Mutex
	addrs []string
	sends int
}

func (f *fakeCC) UpdateState(s resolver.State) error {
	var a []string
	for _, ad := range s.Addresses {
		a = append(a, ad.Addr)
	}
	sort.Strings(a)
	f.mu.Lock()
	f.addrs, f.sends = a, f.sends+1
	f.mu.Unlock()
	return nil
}

func (f *fakeCC) ReportError(error) {}

func (f *fakeCC) waitAddrs(t *testing.T, want ...string) {
	t.Helper()
	sort.Strings(want)
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.sends > 0 && len(f.addrs) == len(want) && (len(want) == 0 || equal(f.addrs, want))
	}, 5*time.Second, 2*time.Millisecond, "resolver never sent %v", want)
}

func equal(a, b []string) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestResolverFollowsRegistry(t *testing.T) {
	node := newNode(t, 10*time.Second)
	cc := &fakeCC{}
	r, err := NewBuilder(node).Build(resolver.Target{URL: url.URL{Scheme: Scheme, Path: "/svc"}}, cc, resolver.BuildOptions{})
	require.NoError(t, err)
	defer r.Close()
	cc.waitAddrs(t)

	a := register(t, node, "a", "127.0.0.1:1001")
	cc.waitAddrs(t, "127.0.0.1:1001")
	b := register(t, node, "b", "127.0.0.1:1002")
	cc.waitAddrs(t, "127.0.0.1:1001", "127.0.0.1:1002")
	_, err = node.Register(context.Background(), aegis.Service{Name: "svc", InstanceID: "http-only",
		Endpoints: map[string]string{"http": "http://127.0.0.1:1003"}})
	require.NoError(t, err)
	_, err = node.Register(context.Background(), aegis.Service{Name: "other", InstanceID: "o",
		Endpoints: map[string]string{"grpc": "127.0.0.1:1004"}})
	require.NoError(t, err)

	b.SetStatus(aegis.StatusUnhealthy)
	cc.waitAddrs(t, "127.0.0.1:1001")
	b.SetStatus(aegis.StatusHealthy)
	cc.waitAddrs(t, "127.0.0.1:1001", "127.0.0.1:1002")

	for i := 0; i < 3; i++ {
		node.ReportResult("svc", "a", false) // EjectAfterFailures
	}
	cc.waitAddrs(t, "127.0.0.1:1002")

	require.NoError(t, b.Deregister(context.Background()))
	// Only the ejected one left: Aegis routes to it rather than to none.
	cc.waitAddrs(t, "127.0.0.1:1001")
	require.NoError(t, a.Deregister(context.Background()))
	cc.waitAddrs(t)
}
