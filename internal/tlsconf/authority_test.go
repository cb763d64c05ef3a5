// This file tests the derived CA, the minted node certificates and the
// keyring cache that holds them.

package tlsconf

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAuthorityIsDeterministic(t *testing.T) {
	a1, err := deriveAuthority(key(1))
	require.NoError(t, err)
	a2, err := deriveAuthority(key(1))
	require.NoError(t, err)
	require.Equal(t, a1.cert.Raw, a2.cert.Raw, "two derivations from one key must give the same CA certificate")
	require.Equal(t, a1.key, a2.key)

	other, err := deriveAuthority(key(2))
	require.NoError(t, err)
	require.NotEqual(t, a1.cert.Raw, other.cert.Raw)
	require.NotEqual(t, a1.key, other.key)

	c := a1.cert
	require.True(t, c.IsCA)
	require.True(t, c.MaxPathLenZero)
	require.Equal(t, x509.KeyUsageCertSign, c.KeyUsage)
	require.Equal(t, caNotBefore, c.NotBefore)
	require.Equal(t, caNotAfter, c.NotAfter)
	require.NoError(t, c.CheckSignatureFrom(c))
}

func TestLeafChainsAndNamesTheNode(t *testing.T) {
	ca, err := deriveAuthority(key(1))
	require.NoError(t, err)
	now := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
	cert, err := ca.mintLeaf("host:7400_a", now)
	require.NoError(t, err)
	leaf := cert.Leaf
	require.Len(t, cert.Certificate, 1)
	require.Equal(t, "aegis://node/host:7400_a", leaf.URIs[0].String())
	require.Equal(t, []string{"host:7400_a"}, certNodes(leaf, false))
	require.Equal(t, now.Add(-leafBackdate), leaf.NotBefore)
	require.Equal(t, now.Add(leafLifetime), leaf.NotAfter)
	require.False(t, leaf.IsCA)

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
		require.NoError(t, err)
	}

	again, err := ca.mintLeaf("host:7400_a", now)
	require.NoError(t, err)
	require.NotEqual(t, cert.Leaf.PublicKey, again.Leaf.PublicKey, "each node certificate has a fresh key")
}

func TestKeyringCachesAndRemints(t *testing.T) {
	r := newRing(key(1), key(1), key(2))
	now := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
	ring := &keyring{node: "a", keys: r.keys, now: func() time.Time { return now }}

	s1, err := ring.state()
	require.NoError(t, err)
	require.Equal(t, [][]byte{key(1), key(2)}, s1.all)
	s2, err := ring.state()
	require.NoError(t, err)
	require.Same(t, s1, s2, "unchanged keys reuse the state")

	r.install(key(3))
	s3, err := ring.state()
	require.NoError(t, err)
	require.NotSame(t, s1, s3)
	require.Same(t, s1.leaf, s3.leaf, "the primary key did not change, nor does the certificate")

	now = now.Add(leafLifetime/2 - time.Minute)
	s4, err := ring.state()
	require.NoError(t, err)
	require.Same(t, s3, s4)
	now = now.Add(2 * time.Minute)
	s5, err := ring.state()
	require.NoError(t, err)
	require.NotSame(t, s3.leaf, s5.leaf, "a certificate half through its life is minted again")

	r.use(key(3))
	s6, err := ring.state()
	require.NoError(t, err)
	require.NotSame(t, s5.leaf, s6.leaf)
	ca3, err := deriveAuthority(key(3))
	require.NoError(t, err)
	require.NoError(t, s6.leaf.Leaf.CheckSignatureFrom(ca3.cert))
}

func TestKeyStateMatches(t *testing.T) {
	s := &keyState{primary: key(1), all: [][]byte{key(1), key(2)}}
	tests := []struct {
		name    string
		primary []byte
		all     [][]byte
		want    bool
	}{
		{"same", key(1), [][]byte{key(1), key(2)}, true},
		{"primary left out of all", key(1), [][]byte{key(2)}, true},
		{"reordered with duplicates", key(1), [][]byte{key(2), key(1), key(2)}, true},
		{"other primary", key(2), [][]byte{key(1), key(2)}, false},
		{"key added", key(1), [][]byte{key(1), key(2), key(3)}, false},
		{"key removed", key(1), [][]byte{key(1)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, s.matches(tt.primary, tt.all))
		})
	}
}

func TestLeafStale(t *testing.T) {
	ca, err := deriveAuthority(key(1))
	require.NoError(t, err)
	minted := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
	cert, err := ca.mintLeaf("a", minted)
	require.NoError(t, err)
	tests := []struct {
		at   time.Time
		want bool
	}{
		{minted, false},
		{minted.Add(-leafBackdate + time.Second), false},
		{minted.Add(-leafBackdate - time.Second), true},
		{minted.Add(leafLifetime / 2), false},
		{minted.Add(leafLifetime/2 + time.Second), true},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, leafStale(cert, tt.at), tt.at)
	}
}
