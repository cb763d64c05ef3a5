// This file builds credentials from the user's own tls.Config: per-node
// certificates signed by the user's CA.

package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// NewFromUser returns credentials for node nodeName from base, the user's
// own configuration, which is cloned and not retained.
//
// base must hold this node's certificate (Certificates, or GetCertificate
// and GetClientCertificate) and the CA that signs the nodes' certificates:
// RootCAs verifies the nodes this node calls, ClientCAs the nodes calling
// it; when only one is set it serves both. A node's certificate names it
// in a URI SAN aegis://node/<name> or, if it has none, in a DNS SAN equal
// to the name (without regard to case; wildcards never match, so that no
// certificate answers for several nodes). When base.Certificates is set,
// its first certificate must name nodeName.
//
// Whatever base says, connections use TLS 1.3, callers must present a
// certificate, and verification is done here (chain, usage, and on the
// client the server's node name) before base.VerifyConnection, if set,
// runs; base.VerifyPeerCertificate, if set, runs earlier and is given no
// verified chains. base.GetConfigForClient is refused: the config it
// returns would replace these settings.
func NewFromUser(base *tls.Config, nodeName string) (*Creds, error) {
	if !validNode(nodeName) {
		return nil, fmt.Errorf("aegis: node name %q: use 1-128 letters, digits, '.', '_', '-' or ':'", nodeName)
	}
	if err := checkUserConfig(base, nodeName); err != nil {
		return nil, err
	}
	serverRoots, clientRoots := base.RootCAs, base.ClientCAs
	if serverRoots == nil {
		serverRoots = clientRoots
	}
	if clientRoots == nil {
		clientRoots = serverRoots
	}
	now := base.Time
	if now == nil {
		now = time.Now
	}
	c := &Creds{node: nodeName, server: base.Clone(), client: base.Clone()}
	c.v = &verifier{
		roots: func(usage x509.ExtKeyUsage) (*x509.CertPool, error) {
			if usage == x509.ExtKeyUsageServerAuth {
				return serverRoots, nil
			}
			return clientRoots, nil
		},
		now:      now,
		allowDNS: true,
		trust:    "a CA of Config.TLS",
		hint:     "are the nodes' certificates signed by the CA in RootCAs or ClientCAs of Config.TLS?",
	}
	c.finish(base.VerifyConnection)
	return c, nil
}

// checkUserConfig refuses a base config that cannot serve as nodeName's
// credentials, saying which field to fix.
func checkUserConfig(base *tls.Config, nodeName string) error {
	switch {
	case base == nil:
		return errors.New("aegis: Config.TLS is nil")
	case base.GetConfigForClient != nil:
		return errors.New("aegis: Config.TLS: GetConfigForClient is not supported; its configs would bypass call verification")
	case base.MaxVersion != 0 && base.MaxVersion < tls.VersionTLS13:
		return errors.New("aegis: Config.TLS: MaxVersion is below TLS 1.3, which calls require")
	case base.RootCAs == nil && base.ClientCAs == nil:
		return errors.New("aegis: Config.TLS: set RootCAs or ClientCAs to the CA that signs the nodes' certificates")
	case len(base.Certificates) == 0 && (base.GetCertificate == nil || base.GetClientCertificate == nil):
		return errors.New("aegis: Config.TLS: no certificate: set Certificates, or GetCertificate and GetClientCertificate")
	case len(base.Certificates) == 0:
		return nil
	}
	leaf := base.Certificates[0].Leaf
	if leaf == nil {
		if len(base.Certificates[0].Certificate) == 0 {
			return errors.New("aegis: Config.TLS: Certificates[0] is empty")
		}
		var err error
		if leaf, err = x509.ParseCertificate(base.Certificates[0].Certificate[0]); err != nil {
			return fmt.Errorf("aegis: Config.TLS: Certificates[0]: %w", err)
		}
	}
	if !namesNode(leaf, nodeName, true) {
		return fmt.Errorf("aegis: Config.TLS: the certificate names %s, not this node %q (use a URI SAN aegis://node/%s or a DNS SAN %s)",
			describeNodes(leaf, true), nodeName, nodeName, nodeName)
	}
	return nil
}
