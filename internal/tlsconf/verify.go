// This file verifies a peer's certificate chain and the node name it
// carries, and turns failures into errors that say what to fix.

package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// ErrUntrustedPeer matches (with errors.Is) every handshake failure that
// comes from trust: the peer's certificate is missing, not signed by a
// trusted authority, expired, not valid for its end of the connection or
// not naming the expected node; or the peer refused our certificate.
var ErrUntrustedPeer = errors.New("aegis: untrusted peer")

// untrustedError is a trust failure. Its text says what is wrong without
// repeating ErrUntrustedPeer's, and it matches ErrUntrustedPeer and the
// underlying cause, if any.
type untrustedError struct {
	msg   string
	cause error
}

func (e *untrustedError) Error() string { return e.msg }

func (e *untrustedError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrUntrustedPeer}
	}
	return []error{ErrUntrustedPeer, e.cause}
}

func untrusted(cause error, format string, args ...any) error {
	return &untrustedError{msg: fmt.Sprintf(format, args...), cause: cause}
}

// Node names travel in a URI SAN, aegis://node/<name>: a node name may hold
// ':' and '_', which a DNS SAN cannot carry.
const (
	uriScheme = "aegis"
	uriHost   = "node"
)

// nodeURI returns the URI SAN that names node.
func nodeURI(node string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: uriHost, Path: "/" + node}
}

// validNode reports whether s is a node name: 1-128 letters, digits, '.',
// '_', '-' or ':'.
func validNode(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '-', c == ':':
		default:
			return false
		}
	}
	return true
}

// certNodes lists the node names cert carries: every aegis://node/<name>
// URI SAN, then, if allowDNS is set and there is none, its DNS SANs.
func certNodes(cert *x509.Certificate, allowDNS bool) []string {
	var names []string
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme || u.Host != uriHost || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			continue
		}
		if name, ok := strings.CutPrefix(u.Path, "/"); ok && validNode(name) {
			names = append(names, name)
		}
	}
	if len(names) == 0 && allowDNS {
		names = append(names, cert.DNSNames...)
	}
	return names
}

// namesNode reports whether cert names node. DNS SANs compare without
// regard to case and never as wildcards: a wildcard would let one
// certificate answer for many nodes.
func namesNode(cert *x509.Certificate, node string, allowDNS bool) bool {
	for _, n := range certNodes(cert, allowDNS) {
		if n == node || (allowDNS && strings.EqualFold(n, node)) {
			return true
		}
	}
	return false
}

// describeNodes renders cert's node names for an error message.
func describeNodes(cert *x509.Certificate, allowDNS bool) string {
	names := certNodes(cert, allowDNS)
	if len(names) == 0 {
		return "no node"
	}
	return fmt.Sprintf("%q", names)
}

// verifier checks peer certificates against the authorities trusted at the
// time of the handshake.
type verifier struct {
	roots    func(usage x509.ExtKeyUsage) (*x509.CertPool, error) // authorities trusted for usage, read per handshake
	now      func() time.Time
	allowDNS bool   // a DNS SAN may name a node (user certificates)
	trust    string // who must sign a peer's certificate, for messages
	hint     string // what to check when trust fails, for messages
}

// verify checks the peer's certificate in cs: it chains to one of v's
// roots at v.now() for usage, and, when want is not empty, names node want.
// It is the whole verification: the tls.Configs built here leave none of
// it to crypto/tls.
func (v *verifier) verify(cs tls.ConnectionState, usage x509.ExtKeyUsage, want string) error {
	if len(cs.PeerCertificates) == 0 {
		return untrusted(nil, "peer sent no certificate")
	}
	roots, err := v.roots(usage)
	if err != nil {
		return err
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	now := v.now()
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return v.explain(err, leaf, now)
	}
	if want != "" && !namesNode(leaf, want, v.allowDNS) {
		return untrusted(nil, "peer certificate names %s, not node %q", describeNodes(leaf, v.allowDNS), want)
	}
	return nil
}

// explain turns an x509 verification error into one that says what to fix.
func (v *verifier) explain(err error, leaf *x509.Certificate, now time.Time) error {
	var (
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &unknown):
		return untrusted(err, "peer certificate is not signed by %s (%s)", v.trust, v.hint)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return untrusted(err, "peer certificate is valid from %s to %s, not at %s (are the clocks right?)",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		return untrusted(err, "peer certificate is not valid for its end of the connection: %v", err)
	default:
		return untrusted(err, "peer certificate is not trusted: %v", err)
	}
}

// refusalAlerts are the TLS alerts a peer sends when it refuses our
// certificate (or our lack of one).
var refusalAlerts = []tls.AlertError{
	42,  // bad_certificate
	43,  // unsupported_certificate
	44,  // certificate_revoked
	45,  // certificate_expired
	46,  // certificate_unknown
	48,  // unknown_ca
	49,  // access_denied
	116, // certificate_required
}

// peerRefused reports whether err is a TLS alert from the peer refusing
// our certificate. crypto/tls reports a received alert as a *net.OpError
// with Op "remote error" holding an unexported alert type whose text is
// that of the tls.AlertError of the same code.
func peerRefused(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" || op.Err == nil {
		return false
	}
	text := op.Err.Error()
	for _, a := range refusalAlerts {
		if text == a.Error() {
			return true
		}
	}
	return false
}
