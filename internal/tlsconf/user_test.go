// This file tests credentials built from the user's own tls.Config.

package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

func userCreds(t testing.TB, ca *testCA, node string, spec leafSpec) *Creds {
	t.Helper()
	c, err := NewFromUser(&tls.Config{Certificates: []tls.Certificate{ca.issue(t, spec)}, RootCAs: ca.pool()}, node)
	require.NoError(t, err)
	return c
}

func TestUserTLS(t *testing.T) {
	root := newTestCA(t, "root")
	a := userCreds(t, root, "a", leafSpec{nodes: []string{"a"}})
	b := userCreds(t, root, "b.example", leafSpec{dns: []string{"b.example"}})
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			requireOK(t, connect(t, b, a, "b.example", network), "a", "b.example")
			requireOK(t, connect(t, a, b, "a", network), "b.example", "a")
		})
	}
}

func TestUserTLSThroughIntermediate(t *testing.T) {
	root := newTestCA(t, "root")
	inter := root.intermediate(t, "inter")
	a, err := NewFromUser(&tls.Config{Certificates: []tls.Certificate{inter.issue(t, leafSpec{nodes: []string{"a"}})}, ClientCAs: root.pool()}, "a")
	require.NoError(t, err)
	b, err := NewFromUser(&tls.Config{Certificates: []tls.Certificate{inter.issue(t, leafSpec{nodes: []string{"b"}})}, ClientCAs: root.pool()}, "b")
	require.NoError(t, err)
	requireOK(t, connect(t, b, a, "b", "tcp"), "a", "b")
}

func TestUserTLSRefusesServerNamingAnotherNode(t *testing.T) {
	root := newTestCA(t, "root")
	a := userCreds(t, root, "a", leafSpec{nodes: []string{"a"}})
	impostor := userCreds(t, root, "c", leafSpec{nodes: []string{"c"}})
	o := connect(t, impostor, a, "b", "tcp")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
	require.ErrorContains(t, o.cliErr, `peer certificate names ["c"], not node "b"`)
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer)
}

func TestUserTLSRefusesOtherCA(t *testing.T) {
	root, other := newTestCA(t, "root"), newTestCA(t, "other")
	a := userCreds(t, root, "a", leafSpec{nodes: []string{"a"}})
	// x's certificate comes from another CA, though x trusts a's.
	x, err := NewFromUser(&tls.Config{Certificates: []tls.Certificate{other.issue(t, leafSpec{nodes: []string{"x"}})}, RootCAs: root.pool()}, "x")
	require.NoError(t, err)

	o := connect(t, x, a, "x", "tcp")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
	require.ErrorContains(t, o.cliErr, "peer certificate is not signed by a CA of Config.TLS")
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer)

	o = connect(t, a, x, "a", "tcp")
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer)
	require.ErrorContains(t, o.srvErr, "peer certificate is not signed by a CA of Config.TLS")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
}

func TestUserVerifyConnectionRunsAfterOurs(t *testing.T) {
	root := newTestCA(t, "root")
	var calls atomic.Int32
	refuse := errors.New("refused by the user")
	conf := &tls.Config{
		Certificates: []tls.Certificate{root.issue(t, leafSpec{nodes: []string{"a"}})},
		RootCAs:      root.pool(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			calls.Add(1)
			if len(cs.PeerCertificates) == 0 {
				return errors.New("ours did not run first")
			}
			return refuse
		},
	}
	a, err := NewFromUser(conf, "a")
	require.NoError(t, err)
	b := userCreds(t, root, "b", leafSpec{nodes: []string{"b"}})
	o := connect(t, b, a, "b", "tcp")
	require.ErrorIs(t, o.cliErr, refuse)
	require.Equal(t, int32(1), calls.Load())
}

func TestNewFromUserOverridesWeakSettings(t *testing.T) {
	root := newTestCA(t, "root")
	c, err := NewFromUser(&tls.Config{
		Certificates: []tls.Certificate{root.issue(t, leafSpec{nodes: []string{"a"}})},
		ClientCAs:    root.pool(),
		MinVersion:   tls.VersionTLS10,
		ClientAuth:   tls.NoClientCert,
	}, "a")
	require.NoError(t, err)
	s := c.Server()
	require.Equal(t, uint16(tls.VersionTLS13), s.MinVersion)
	require.Equal(t, tls.RequireAnyClientCert, s.ClientAuth)
	require.NotNil(t, s.VerifyConnection)
	cl := c.Client("b")
	require.Equal(t, uint16(tls.VersionTLS13), cl.MinVersion)
	require.NotNil(t, cl.VerifyConnection)
}

func TestNewFromUserChecks(t *testing.T) {
	root := newTestCA(t, "root")
	certA := root.issue(t, leafSpec{nodes: []string{"a"}})
	noLeaf := certA
	noLeaf.Leaf = nil
	tests := []struct {
		name string
		conf *tls.Config
		err  string
	}{
		{"nil", nil, "Config.TLS is nil"},
		{"no CA", &tls.Config{Certificates: []tls.Certificate{certA}}, "set RootCAs or ClientCAs"},
		{"no certificate", &tls.Config{RootCAs: root.pool()}, "no certificate"},
		{"server callback only", &tls.Config{RootCAs: root.pool(), GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &certA, nil }}, "no certificate"},
		{"other node", &tls.Config{RootCAs: root.pool(), Certificates: []tls.Certificate{root.issue(t, leafSpec{nodes: []string{"b"}})}}, `names ["b"], not this node "a"`},
		{"empty certificate", &tls.Config{RootCAs: root.pool(), Certificates: []tls.Certificate{{}}}, "Certificates[0] is empty"},
		{"old TLS only", &tls.Config{RootCAs: root.pool(), Certificates: []tls.Certificate{certA}, MaxVersion: tls.VersionTLS12}, "below TLS 1.3"},
		{"GetConfigForClient", &tls.Config{RootCAs: root.pool(), Certificates: []tls.Certificate{certA}, GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, nil }}, "GetConfigForClient"},
		{"valid", &tls.Config{RootCAs: root.pool(), Certificates: []tls.Certificate{certA}}, ""},
		{"valid without parsed leaf", &tls.Config{ClientCAs: root.pool(), Certificates: []tls.Certificate{noLeaf}}, ""},
		{"callbacks", &tls.Config{
			RootCAs:              root.pool(),
			GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &certA, nil },
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certA, nil },
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewFromUser(tt.conf, "a")
			if tt.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.err)
		})
	}
	_, err := NewFromUser(&tls.Config{RootCAs: x509.NewCertPool(), Certificates: []tls.Certificate{certA}}, "bad name")
	require.ErrorContains(t, err, "node name")
}

func TestUserPeerNode(t *testing.T) {
	root := newTestCA(t, "root")
	c := userCreds(t, root, "a", leafSpec{nodes: []string{"a"}})
	state := func(spec leafSpec) tls.ConnectionState {
		cs := peerState(t, root.issue(t, spec))
		cs.HandshakeComplete = true
		return cs
	}
	n, err := c.PeerNode(state(leafSpec{dns: []string{"b"}}))
	require.NoError(t, err)
	require.Equal(t, "b", n)
	n, err = c.PeerNode(state(leafSpec{nodes: []string{"c"}, dns: []string{"b"}}))
	require.NoError(t, err)
	require.Equal(t, "c", n)
	_, err = c.PeerNode(state(leafSpec{dns: []string{"b", "c"}}))
	require.ErrorContains(t, err, "several nodes")
	_, err = c.PeerNode(state(leafSpec{}))
	require.ErrorContains(t, err, "names no node")

	d := derived(t, "d", newRing(key(1)))
	_, err = d.PeerNode(state(leafSpec{dns: []string{"b"}}))
	require.ErrorContains(t, err, "names no node", "derived peers are named by URI SAN only")
}
