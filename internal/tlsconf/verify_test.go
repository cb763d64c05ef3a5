// This file tests peer verification: certificates crafted to be wrong in
// one way each, checked directly and through a real handshake.

package tlsconf

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
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testCA is a CA made up by a test, perhaps an intermediate one.
type testCA struct {
	cert  *x509.Certificate
	key   ed25519.PrivateKey
	chain [][]byte // DER of the intermediates from this CA up, root excluded
}

var testNow = time.Now()

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	return (&testCA{}).sign(t, name, nil)
}

// sign returns a CA named name signed by ca, or self-signed if parent is
// nil (ca is then the empty testCA).
func (ca *testCA) sign(t testing.TB, name string, parent *testCA) *testCA {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	signer, signerKey := tmpl, priv
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, pub, signerKey)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	out := &testCA{cert: cert, key: priv}
	if parent != nil {
		out.chain = append([][]byte{der}, parent.chain...)
	}
	return out
}

func (ca *testCA) intermediate(t testing.TB, name string) *testCA {
	return (&testCA{}).sign(t, name, ca)
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// leafSpec describes a certificate to issue; zero fields take defaults.
type leafSpec struct {
	nodes     []string // as URI SANs
	dns       []string
	eku       []x509.ExtKeyUsage
	notBefore time.Time
	notAfter  time.Time
}

func (ca *testCA) issue(t testing.TB, spec leafSpec) tls.Certificate {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	if spec.eku == nil {
		spec.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	if spec.notBefore.IsZero() {
		spec.notBefore, spec.notAfter = testNow.Add(-time.Hour), testNow.Add(time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3),
		DNSNames:     spec.dns,
		NotBefore:    spec.notBefore,
		NotAfter:     spec.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  spec.eku,
	}
	for _, n := range spec.nodes {
		tmpl.URIs = append(tmpl.URIs, nodeURI(n))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return tls.Certificate{Certificate: append([][]byte{der}, ca.chain...), PrivateKey: priv, Leaf: leaf}
}

func peerState(t testing.TB, cert tls.Certificate) tls.ConnectionState {
	t.Helper()
	var cs tls.ConnectionState
	for _, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		cs.PeerCertificates = append(cs.PeerCertificates, c)
	}
	return cs
}

func TestVerify(t *testing.T) {
	root, other := newTestCA(t, "root"), newTestCA(t, "other")
	inter := root.intermediate(t, "inter")
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	bare := func(c tls.Certificate) tls.Certificate { c.Certificate = c.Certificate[:1]; return c }
	tests := []struct {
		name     string
		cert     tls.Certificate
		usage    x509.ExtKeyUsage
		want     string
		allowDNS bool
		err      string // "" for success
	}{
		{"valid", root.issue(t, leafSpec{nodes: []string{"a"}}), x509.ExtKeyUsageServerAuth, "a", false, ""},
		{"any name on the server end", root.issue(t, leafSpec{}), x509.ExtKeyUsageClientAuth, "", false, ""},
		{"other CA", other.issue(t, leafSpec{nodes: []string{"a"}}), x509.ExtKeyUsageServerAuth, "a", false, "is not signed by the test CA (check it)"},
		{"expired", root.issue(t, leafSpec{nodes: []string{"a"}, notBefore: testNow.Add(-2 * time.Hour), notAfter: testNow.Add(-time.Hour)}), x509.ExtKeyUsageServerAuth, "a", false, "are the clocks right?"},
		{"not yet valid", root.issue(t, leafSpec{nodes: []string{"a"}, notBefore: testNow.Add(time.Hour), notAfter: testNow.Add(2 * time.Hour)}), x509.ExtKeyUsageServerAuth, "a", false, "are the clocks right?"},
		{"client certificate as server", root.issue(t, leafSpec{nodes: []string{"a"}, eku: client}), x509.ExtKeyUsageServerAuth, "a", false, "not valid for its end"},
		{"server certificate as client", root.issue(t, leafSpec{nodes: []string{"a"}, eku: server}), x509.ExtKeyUsageClientAuth, "", false, "not valid for its end"},
		{"other node", root.issue(t, leafSpec{nodes: []string{"b"}}), x509.ExtKeyUsageServerAuth, "a", false, `names ["b"], not node "a"`},
		{"no node", root.issue(t, leafSpec{}), x509.ExtKeyUsageServerAuth, "a", false, `names no node, not node "a"`},
		{"DNS name of a derived peer", root.issue(t, leafSpec{dns: []string{"a"}}), x509.ExtKeyUsageServerAuth, "a", false, "names no node"},
		{"DNS name of a user peer", root.issue(t, leafSpec{dns: []string{"A"}}), x509.ExtKeyUsageServerAuth, "a", true, ""},
		{"URI SAN before DNS SAN", root.issue(t, leafSpec{nodes: []string{"b"}, dns: []string{"a"}}), x509.ExtKeyUsageServerAuth, "a", true, `names ["b"]`},
		{"wildcard never matches", root.issue(t, leafSpec{dns: []string{"*.x"}}), x509.ExtKeyUsageServerAuth, "a.x", true, "not node"},
		{"several nodes, one expected", root.issue(t, leafSpec{nodes: []string{"b", "a"}}), x509.ExtKeyUsageServerAuth, "a", false, ""},
		{"through an intermediate", inter.issue(t, leafSpec{nodes: []string{"a"}}), x509.ExtKeyUsageServerAuth, "a", false, ""},
		{"intermediate left out", bare(inter.issue(t, leafSpec{nodes: []string{"a"}})), x509.ExtKeyUsageServerAuth, "a", false, "is not signed by"},
		{"no certificate", tls.Certificate{}, x509.ExtKeyUsageServerAuth, "a", false, "peer sent no certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := &verifier{
				roots:    func(x509.ExtKeyUsage) (*x509.CertPool, error) { return root.pool(), nil },
				now:      func() time.Time { return testNow },
				allowDNS: tt.allowDNS,
				trust:    "the test CA",
				hint:     "check it",
			}
			err := v.verify(peerState(t, tt.cert), tt.usage, tt.want)
			if tt.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrUntrustedPeer)
			require.ErrorContains(t, err, tt.err)
		})
	}
}

func TestCertNodes(t *testing.T) {
	tests := []struct {
		uri  string
		want []string
	}{
		{"aegis://node/a", []string{"a"}},
		{"aegis://node/10.0.0.1:7400", []string{"10.0.0.1:7400"}},
		{"aegis://node/", nil},
		{"aegis://node/a/b", nil},
		{"aegis://node/a?x=1", nil},
		{"aegis://node/a#f", nil},
		{"aegis://u@node/a", nil},
		{"aegis://other/a", nil},
		{"https://node/a", nil},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.uri)
		require.NoError(t, err)
		require.Equal(t, tt.want, certNodes(&x509.Certificate{URIs: []*url.URL{u}}, false), tt.uri)
	}
	require.Equal(t, []string{"x", "y"}, certNodes(&x509.Certificate{DNSNames: []string{"x", "y"}}, true))
	require.Empty(t, certNodes(&x509.Certificate{DNSNames: []string{"x"}}, false))
	name := "Aa0._-:"
	u, err := url.Parse(nodeURI(name).String())
	require.NoError(t, err)
	require.Equal(t, []string{name}, certNodes(&x509.Certificate{URIs: []*url.URL{u}}, false))
}

func TestPeerRefused(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "remote error", Err: tls.AlertError(42)}, true},
		{&net.OpError{Op: "remote error", Err: tls.AlertError(48)}, true},
		{&net.OpError{Op: "remote error", Err: tls.AlertError(116)}, true},
		{fmt.Errorf("read: %w", &net.OpError{Op: "remote error", Err: tls.AlertError(46)}), true},
		{&net.OpError{Op: "remote error", Err: tls.AlertError(40)}, false},
		{&net.OpError{Op: "local error", Err: tls.AlertError(42)}, false},
		{errors.New("tls: bad certificate"), false},
		{context.DeadlineExceeded, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, peerRefused(tt.err), tt.err.Error())
	}
}

// TestClientVerifiesServerFully runs real handshakes against servers
// presenting certificates signed by the cluster's own CA but wrong in one
// way each: crypto/tls checks nothing on the client (InsecureSkipVerify),
// so VerifyConnection must catch every one.
func TestClientVerifiesServerFully(t *testing.T) {
	ca, err := deriveAuthority(key(1))
	require.NoError(t, err)
	cluster := &testCA{cert: ca.cert, key: ca.key}
	cli := derived(t, "cli", newRing(key(1)))
	tests := []struct {
		name string
		cert tls.Certificate
		err  string
	}{
		{"valid", cluster.issue(t, leafSpec{nodes: []string{"srv"}}), ""},
		{"client-only usage", cluster.issue(t, leafSpec{nodes: []string{"srv"}, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}), "not valid for its end"},
		{"expired", cluster.issue(t, leafSpec{nodes: []string{"srv"}, notBefore: testNow.Add(-3 * time.Hour), notAfter: testNow.Add(-2 * time.Hour)}), "are the clocks right?"},
		{"other node", cluster.issue(t, leafSpec{nodes: []string{"other"}}), `not node "srv"`},
		{"DNS name only", cluster.issue(t, leafSpec{dns: []string{"srv"}}), "names no node"},
		{"other CA", newTestCA(t, "x").issue(t, leafSpec{nodes: []string{"srv"}}), "not signed by the cluster key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{tt.cert}, ClientAuth: tls.RequireAnyClientCert}
			err := handshakeWith(t, srv, cli, "srv")
			if tt.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrUntrustedPeer)
			require.ErrorContains(t, err, tt.err)
		})
	}
}

// handshakeWith runs cli's DialTLS against a plain TLS server with conf
// over loopback TCP and returns DialTLS's error.
func handshakeWith(t testing.TB, conf *tls.Config, cli *Creds, peerNode string) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(testWait))
		_ = tls.Server(c, conf).Handshake()
	}()
	defer func() { <-done }()
	raw, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	tc, err := cli.DialTLS(ctx, raw, peerNode)
	if err != nil {
		return err
	}
	return tc.Close()
}
