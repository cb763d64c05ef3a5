// This file tests derived credentials end to end: trust, refusals and
// their errors, over net.Pipe and loopback TCP.

package tlsconf

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/require"
)

var networks = []string{"pipe", "tcp"}

func TestSameKeyMutualTLS(t *testing.T) {
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			r := newRing(key(1), key(1))
			a, b := derived(t, "a", r), derived(t, "node:b_1", r)
			requireOK(t, connect(t, b, a, "node:b_1", network), "a", "node:b_1")
			requireOK(t, connect(t, a, b, "a", network), "node:b_1", "a")
		})
	}
}

// Refusals run over TCP only: on net.Pipe, whose writes wait for the
// reader, a refusal stalls until the handshake timeout, as both ends write
// (one its alert, the other the rest of its flight) and neither reads.

func TestDifferentKeysRefusedOnBothSides(t *testing.T) {
	a := derived(t, "a", newRing(key(1)))
	b := derived(t, "b", newRing(key(2)))
	o := connect(t, b, a, "b", "tcp")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
	require.ErrorContains(t, o.cliErr, "failed: peer certificate is not signed by the cluster key (is SecretKey the same on every node?)")
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer)
	require.ErrorContains(t, o.srvErr, "the peer refused our certificate")
	t.Log(o.cliErr)
	t.Log(o.srvErr)
}

func TestServerRefusesUntrustedClient(t *testing.T) {
	// The client trusts the server's key but signs with one the server
	// lacks: the server refuses, and the client sees it at its first read.
	srv := derived(t, "srv", newRing(key(1)))
	cli := derived(t, "cli", newRing(key(2), key(1)))
	o := connect(t, srv, cli, "srv", "tcp")
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer)
	require.ErrorContains(t, o.srvErr, "peer certificate is not signed by the cluster key")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
	require.ErrorContains(t, o.cliErr, "the peer refused our certificate")
}

func TestClientRefusesServerNamingAnotherNode(t *testing.T) {
	r := newRing(key(1))
	a, b := derived(t, "a", r), derived(t, "b", r)
	o := connect(t, b, a, "c", "tcp")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
	require.ErrorContains(t, o.cliErr, `peer certificate names ["b"], not node "c"`)
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer)

	o = connect(t, b, a, "", "tcp")
	require.ErrorContains(t, o.cliErr, "no valid node name to expect")
}

func TestClientWithoutCertificateRefused(t *testing.T) {
	srv := derived(t, "srv", newRing(key(1)))
	inner, dial := listen(t, "tcp")
	errs := make(chan error, 1)
	l := srv.Listener(inner, ListenerOptions{OnError: func(err error) { errs <- err }})
	defer l.Close()

	raw, err := dial()
	require.NoError(t, err)
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	defer tc.Close()
	require.NoError(t, tc.Handshake()) // TLS 1.3: the refusal comes after
	_, err = tc.Read(make([]byte, 1))
	require.ErrorContains(t, err, "certificate required")
	require.ErrorIs(t, srv.ExplainRefusal(raw.RemoteAddr(), err), ErrUntrustedPeer)
	require.ErrorContains(t, <-errs, "client didn't provide a certificate")
}

func TestServerConfigIsTLS13Only(t *testing.T) {
	srv := derived(t, "srv", newRing(key(1)))
	inner, dial := listen(t, "tcp")
	errs := make(chan error, 1)
	l := srv.Listener(inner, ListenerOptions{OnError: func(err error) { errs <- err }})
	defer l.Close()

	raw, err := dial()
	require.NoError(t, err)
	cli := srv.Client("srv")
	cli.MinVersion, cli.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	tc := tls.Client(raw, cli)
	defer tc.Close()
	require.Error(t, tc.Handshake())
	require.ErrorContains(t, <-errs, "version")
}

func TestPeerNodeNeedsCompletedHandshake(t *testing.T) {
	c := derived(t, "a", newRing(key(1)))
	_, err := c.PeerNode(tls.ConnectionState{})
	require.ErrorIs(t, err, ErrUntrustedPeer)
}

func TestNewDerivedRefusesBadInput(t *testing.T) {
	_, err := NewDerived("bad name", newRing(key(1)).keys)
	require.ErrorContains(t, err, "node name")
	_, err = NewDerived("a", nil)
	require.Error(t, err)
	_, err = NewDerived("a", newRing(nil).keys)
	require.ErrorIs(t, err, errNoPrimary)
}

func TestConfigsAreIndependentCopies(t *testing.T) {
	c := derived(t, "a", newRing(key(1)))
	s := c.Server()
	s.ClientAuth = tls.NoClientCert
	require.Equal(t, tls.RequireAnyClientCert, c.Server().ClientAuth)
	require.Equal(t, uint16(tls.VersionTLS13), c.Client("b").MinVersion)
	require.Equal(t, "a", c.Node())
}
