package aegis

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/rpc"
	"github.com/aegisipc/aegis/internal/testutil"
	"github.com/aegisipc/aegis/internal/tlsconf"
)

func withKey(key []byte) clusterOpt {
	return func(cfg *Config) { cfg.SecretKey = key }
}

func TestSecureByDefault(t *testing.T) {
	c := DefaultConfig()
	c.BindAddr = "0.0.0.0:0"
	err := c.Validate()
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.Contains(t, err.Error(), "SecretKey")
	require.Contains(t, err.Error(), "NewSecretKey", "the error says how to make a key")
	for _, fix := range []func(*Config){
		func(c *Config) { c.SecretKey = NewSecretKey() },
		func(c *Config) { c.AllowInsecure = true },
		func(c *Config) { c.TLS = &tls.Config{} },
		func(c *Config) { c.BindAddr = "127.0.0.1:0" },
		func(c *Config) { c.BindAddr = "[::1]:0" },
		func(c *Config) { c.BindAddr = "localhost:0" },
	} {
		c := DefaultConfig()
		c.BindAddr = "10.1.2.3:7946"
		fix(c)
		require.NoError(t, c.Validate())
	}
	require.Len(t, NewSecretKey(), 32)
	require.NotEqual(t, NewSecretKey(), NewSecretKey())
}

// TestSecretKeyGuardsGossipAndCalls: with SecretKey, nodes without it or
// with another key cannot join, and a caller without valid credentials is
// refused before any handler runs.
func TestSecretKeyGuardsGossipAndCalls(t *testing.T) {
	key := NewSecretKey()
	c := newCluster(t, 2, false, overTCP, withKey(key))
	c.waitConverged(10 * time.Second)
	var runs atomic.Int64
	c.register(c.nodes[1], Service{Name: "guarded", InstanceID: "g-1", Handler: func(ctx context.Context, req *Request) ([]byte, error) {
		runs.Add(1)
		return []byte("ok"), nil
	}}, 1)
	out, err := c.nodes[0].Call(context.Background(), "guarded", "x", nil)
	require.NoError(t, err, "members call each other over TLS")
	require.Equal(t, "ok", string(out))
	require.EqualValues(t, 1, runs.Load())

	for name, k := range map[string][]byte{"no key": nil, "another key": NewSecretKey()} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(c.net, 9, nil)
			overTCP(cfg)
			cfg.SecretKey = k
			outsider, err := New(cfg)
			require.NoError(t, err)
			defer outsider.Shutdown()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err = outsider.Join(ctx, c.nodes[0].Addr())
			require.Error(t, err, "cannot join")
			require.Len(t, c.nodes[0].gossip.peerList(), 1, "still two members")
		})
	}

	// Direct calls to the call port, bypassing gossip.
	addr := c.nodes[1].tr.CallAddr()
	before := c.nodes[1].Stats().TLSRefused
	plain := rpc.NewClient(rpc.ClientOptions{})
	defer plain.Close()
	for i := 0; i < 5; i++ {
		_, err = plain.Call(context.Background(), addr, &rpc.Request{Service: "guarded", Method: "x", InstanceID: "g-1", Timeout: time.Second})
		require.Error(t, err, "a plaintext caller is refused")
	}
	stranger := newKeyedCaller(t, NewSecretKey(), c.nodes[1])
	_, err = stranger.Call(context.Background(), addr, &rpc.Request{Service: "guarded", Method: "x", InstanceID: "g-1", Timeout: time.Second})
	require.Error(t, err, "a caller with another key is refused")
	require.EqualValues(t, 1, runs.Load(), "no handler ran for them")
	testutil.Eventually(t, 5*time.Second, func() bool { return c.nodes[1].Stats().TLSRefused >= before+6 }, "refusals counted")
}

// newKeyedCaller returns an rpc client presenting credentials derived from
// key (node name "stranger"), as a process holding another key would.
func newKeyedCaller(t *testing.T, key []byte, callee *Node) *rpc.Client {
	creds, err := tlsconf.NewDerived("stranger", func() ([]byte, [][]byte) { return key, [][]byte{key} })
	require.NoError(t, err)
	client := rpc.NewClient(rpc.ClientOptions{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := callee.tr.DialCall(ctx, addr)
		if err != nil {
			return nil, err
		}
		return dialTLS(ctx, creds, conn, callee.Name())
	}})
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// testCA issues node certificates for Config.TLS.
type testCA struct {
	cert *x509.Certificate
	key  ed25519.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: priv, pool: pool}
}

// config returns a tls.Config for node, its certificate naming it.
func (ca *testCA) config(t *testing.T, node string) *tls.Config {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	u, err := url.Parse("aegis://node/" + node)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: node},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	require.NoError(t, err)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}}, RootCAs: ca.pool, ClientCAs: ca.pool}
}

// TestUserTLS: with Config.TLS, members with certificates from the cluster's
// CA call each other; a caller whose certificate comes from another CA is
// refused before any handler runs.
func TestUserTLS(t *testing.T) {
	ca := newTestCA(t)
	i := 0
	c := newCluster(t, 2, false, func(cfg *Config) {
		cfg.TLS = ca.config(t, fmt.Sprintf("node-%02d", i))
		i++
	})
	c.waitConverged(10 * time.Second)
	out, err := c.nodes[0].CallWithFailover(context.Background(), "svc", "x", []byte("hi"), WithExclude("inst-0"))
	require.NoError(t, err)
	require.Equal(t, "hi", string(out))

	other := newTestCA(t)
	creds, err := tlsconf.NewFromUser(other.config(t, "node-07"), "node-07")
	require.NoError(t, err)
	client := rpc.NewClient(rpc.ClientOptions{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := c.nodes[1].tr.DialCall(ctx, addr)
		if err != nil {
			return nil, err
		}
		return dialTLS(ctx, creds, conn, c.nodes[1].Name())
	}})
	defer client.Close()
	_, err = client.Call(context.Background(), c.nodes[1].tr.CallAddr(), &rpc.Request{Service: "svc", Method: "x", InstanceID: "inst-1", Timeout: time.Second})
	require.Error(t, err, "a certificate from another CA is refused")
	require.ErrorIs(t, err, tlsconf.ErrUntrustedPeer)
}

// TestKeyRotationUnderLoad rotates the cluster key on ten nodes while
// calls flow: every node acknowledges every step, and no call fails.
func TestKeyRotationUnderLoad(t *testing.T) {
	old := NewSecretKey()
	c := newCluster(t, 10, false, withKey(old))
	c.waitConverged(20 * time.Second)
	for _, nd := range c.nodes {
		testutil.Eventually(t, 20*time.Second, func() bool { return len(nd.gossip.peerList()) == 9 }, "%s sees every member", nd.Name())
	}
	ctx := context.Background()

	var calls, failures atomic.Int64
	var firstErr atomic.Pointer[string]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd := c.nodes[g]
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := nd.CallWithFailover(ctx, "svc", "x", nil); err != nil {
					failures.Add(1)
					msg := err.Error()
					firstErr.CompareAndSwap(nil, &msg)
				}
				calls.Add(1)
			}
		}()
	}
	fresh := NewSecretKey()
	km := c.nodes[3].Keys()
	steps := []struct {
		name string
		do   func() (*KeyResponse, error)
	}{
		{"install", func() (*KeyResponse, error) { return km.InstallKey(ctx, fresh) }},
		{"use", func() (*KeyResponse, error) { return km.UseKey(ctx, fresh) }},
		{"remove", func() (*KeyResponse, error) { return km.RemoveKey(ctx, old) }},
	}
	for _, step := range steps {
		before := calls.Load()
		resp, err := step.do()
		require.NoError(t, err, step.name)
		require.Len(t, resp.Nodes, 10, "%s: every node answered", step.name)
		require.Empty(t, resp.Failed(), step.name)
		testutil.Eventually(t, 10*time.Second, func() bool { return calls.Load() > before+100 }, "calls flow after %s", step.name)
	}
	list, err := c.nodes[7].Keys().ListKeys(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]int{KeyFingerprint(fresh): 10}, list.Keys)
	require.Equal(t, map[string]int{KeyFingerprint(fresh): 10}, list.PrimaryKeys)
	_, err = km.RemoveKey(ctx, fresh)
	require.ErrorIs(t, err, ErrKeyManagement, "nobody removes its primary key")
	close(stop)
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		t.Fatalf("%d of %d calls failed during rotation; first: %s", failures.Load(), calls.Load(), *p)
	}
	t.Logf("%d calls during rotation, none failed", calls.Load())

	// New connections use the new key only: a node still on the old key
	// cannot join.
	cfg := testConfig(c.net, 20, nil)
	cfg.SecretKey = old
	late, err := New(cfg)
	require.NoError(t, err)
	defer late.Shutdown()
	jctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = late.Join(jctx, c.nodes[0].Addr())
	require.Error(t, err)
}

func TestKeyManagerWithoutKey(t *testing.T) {
	c := newCluster(t, 1, false)
	_, err := c.nodes[0].Keys().ListKeys(context.Background())
	require.ErrorIs(t, err, ErrKeyManagement)
	_, err = c.nodes[0].Keys().InstallKey(context.Background(), []byte("short"))
	require.ErrorIs(t, err, ErrKeyManagement)
	require.True(t, errors.Is(err, ErrKeyManagement) && strings.Contains(err.Error(), "16, 24 or 32"))
}

// dialTLS is creds.DialTLS as a net.Conn (nil on failure, not a nil
// *tls.Conn).
func dialTLS(ctx context.Context, creds *tlsconf.Creds, conn net.Conn, peer string) (net.Conn, error) {
	tc, err := creds.DialTLS(ctx, conn, peer)
	if err != nil {
		return nil, err
	}
	return tc, nil
}

// TestClusterNameKeepsClustersApart: a node of another cluster cannot join,
// even on the same network with the same key.
func TestClusterNameKeepsClustersApart(t *testing.T) {
	key := NewSecretKey()
	c := newCluster(t, 2, false, withKey(key), func(cfg *Config) { cfg.ClusterName = "blue" })
	c.waitConverged(10 * time.Second)
	cfg := testConfig(c.net, 9, nil)
	cfg.SecretKey, cfg.ClusterName = key, "green"
	other, err := New(cfg)
	require.NoError(t, err)
	defer other.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = other.Join(ctx, c.nodes[0].Addr())
	require.Error(t, err)
	require.Len(t, c.nodes[0].Members(), 2, "the clusters did not merge")
	require.Empty(t, other.Instances("svc"))
}
