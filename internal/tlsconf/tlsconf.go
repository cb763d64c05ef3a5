// Package tlsconf builds the mutual TLS 1.3 configuration of call
// connections, either derived from the cluster's secret keys or from the
// user's own tls.Config, using crypto/tls, crypto/x509 and crypto/hkdf only.
//
// Derived credentials: every node derives the same CA from each installed
// key (an ed25519 key seeded by HKDF-SHA256 of the key, in a certificate
// built from a fixed template, so no files are needed), and mints its own
// short-lived certificate signed by the CA of the primary key. A node name
// travels in a URI SAN, aegis://node/<name>, since ':' is not valid in a
// DNS name. Peers are trusted when their certificate chains to the CA of
// any installed key, so keys can be rotated without downtime: install the
// new key everywhere, make it primary everywhere, then remove the old one.
//
// Derived credentials prove that a peer holds a cluster key, not which node
// it is: any holder of a key can mint a certificate naming any node. Per-node
// identity takes the user's own certificates (NewFromUser).
//
// Both ends verify each other fully; a client also checks that the server's
// certificate names the node it meant to call.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Creds holds the TLS credentials of one node. It is safe for concurrent
// use; derived Creds read the keyring on every handshake.
type Creds struct {
	node   string
	ring   *keyring // nil for the user's credentials
	v      *verifier
	server *tls.Config // VerifyConnection and, when derived, the certificate callback set
	client *tls.Config // all but the expected node's check, which Client adds
}

// NewDerived returns credentials for node nodeName derived from the keys
// reported by keys: primary is the key whose CA signs this node's
// certificate, all every installed key (it need not repeat primary). keys
// is called at every handshake from many goroutines at once, so it must
// be safe for concurrent use and cheap; the slices it returns are copied
// when they differ from the previous call's and not retained.
// Credentials are built (and this node's certificate minted) here, and
// again whenever the keys change.
func NewDerived(nodeName string, keys func() (primary []byte, all [][]byte)) (*Creds, error) {
	if !validNode(nodeName) {
		return nil, fmt.Errorf("aegis: node name %q: use 1-128 letters, digits, '.', '_', '-' or ':'", nodeName)
	}
	if keys == nil {
		return nil, errors.New("aegis: no keyring for derived TLS credentials")
	}
	ring := &keyring{node: nodeName, keys: keys, now: time.Now}
	c := &Creds{node: nodeName, ring: ring}
	c.v = &verifier{
		roots: func(x509.ExtKeyUsage) (*x509.CertPool, error) {
			s, err := ring.state()
			if err != nil {
				return nil, err
			}
			return s.pool, nil
		},
		now:   ring.now,
		trust: "the cluster key",
		hint:  "is SecretKey the same on every node?",
	}
	leaf := func() (*tls.Certificate, error) {
		s, err := ring.state()
		if err != nil {
			return nil, err
		}
		return s.leaf, nil
	}
	c.server = &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return leaf() },
	}
	c.client = &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return leaf() },
	}
	c.finish(nil)
	if _, err := ring.state(); err != nil {
		return nil, err
	}
	return c, nil
}

// finish sets what every Creds' configs share: TLS 1.3 only, a client
// certificate required of every caller, and verification done by c.v in
// VerifyConnection (then by userVerify, the user's own callback, if any).
// crypto/tls verifies nothing itself (RequireAnyClientCert on the server,
// InsecureSkipVerify on the client): c.v checks the chain, the usage and,
// on the client, the server's node name, and its errors say what to fix.
func (c *Creds) finish(userVerify func(tls.ConnectionState) error) {
	c.server.MinVersion = tls.VersionTLS13
	c.server.ClientAuth = tls.RequireAnyClientCert
	c.server.VerifyConnection = chainVerify(func(cs tls.ConnectionState) error {
		return c.v.verify(cs, x509.ExtKeyUsageClientAuth, "")
	}, userVerify)
	c.server.Time = c.v.now
	c.client.MinVersion = tls.VersionTLS13
	c.client.InsecureSkipVerify = true
	c.client.VerifyConnection = userVerify // Client puts its own check first
	c.client.Time = c.v.now
}

func chainVerify(ours, theirs func(tls.ConnectionState) error) func(tls.ConnectionState) error {
	if theirs == nil {
		return ours
	}
	return func(cs tls.ConnectionState) error {
		if err := ours(cs); err != nil {
			return err
		}
		return theirs(cs)
	}
}

// Node returns the name of the node these credentials belong to.
func (c *Creds) Node() string { return c.node }

// Server returns a new tls.Config for the accepting end of call
// connections: it presents this node's certificate and requires a client
// certificate trusted by these credentials.
func (c *Creds) Server() *tls.Config { return c.server.Clone() }

// Client returns a new tls.Config for dialing node peerNode: it presents
// this node's certificate and accepts only a server certificate trusted by
// these credentials that names peerNode. An empty or invalid peerNode
// yields a config that refuses every server.
func (c *Creds) Client(peerNode string) *tls.Config {
	conf := c.client.Clone()
	conf.VerifyConnection = chainVerify(func(cs tls.ConnectionState) error {
		if !validNode(peerNode) {
			return untrusted(nil, "no valid node name to expect of the peer (got %q)", peerNode)
		}
		return c.v.verify(cs, x509.ExtKeyUsageServerAuth, peerNode)
	}, c.client.VerifyConnection)
	return conf
}

// PeerNode returns the name of the node at the other end of a connection
// whose handshake with a config from c completed, as its certificate
// (already verified by that handshake) names it: its aegis://node/<name>
// URI SAN or, for the user's certificates without one, its only DNS SAN.
func (c *Creds) PeerNode(state tls.ConnectionState) (string, error) {
	if !state.HandshakeComplete || len(state.PeerCertificates) == 0 {
		return "", untrusted(nil, "no verified peer certificate")
	}
	names := certNodes(state.PeerCertificates[0], c.ring == nil)
	switch len(names) {
	case 1:
		return names[0], nil
	case 0:
		return "", untrusted(nil, "peer certificate names no node")
	default:
		return "", untrusted(nil, "peer certificate names several nodes %q; give it one URI SAN aegis://node/<name>", names)
	}
}
