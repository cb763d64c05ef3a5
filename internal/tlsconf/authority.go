// This file derives the certificate authority of a cluster key and mints the
// short-lived node certificates it signs.

package tlsconf

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// caInfo is the HKDF info string for the CA key. Changing it changes every
// cluster's CA, so it carries a version.
const caInfo = "aegis call CA v1"

// The CA certificate's validity is fixed so that every node derives the
// byte-identical certificate from the same key, whatever its clock says.
var (
	caNotBefore = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	caNotAfter  = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

const (
	// leafLifetime is how long a node certificate is valid after it is
	// minted; it is minted again once half of it has passed.
	leafLifetime = 7 * 24 * time.Hour
	// leafBackdate moves a node certificate's NotBefore into the past, so
	// that peers whose clocks run behind ours accept it.
	leafBackdate = time.Hour
)

// authority is the CA derived from one cluster key. It is immutable.
type authority struct {
	cert *x509.Certificate
	key  ed25519.PrivateKey
}

// deriveAuthority returns the CA of key: its private key is an ed25519 key
// whose seed is HKDF-SHA256(key, info caInfo), and its certificate is
// self-signed from a fixed template. ed25519 signatures are deterministic,
// so every node holding key derives byte-identical results.
func deriveAuthority(key []byte) (*authority, error) {
	seed, err := hkdf.Key(sha256.New, key, nil, caInfo, ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("aegis: deriving the call CA: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	// SubjectKeyId is set here rather than left to crypto/x509, so that
	// the bytes do not depend on the Go release that built the node.
	skid := sha256.Sum256(pub)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "aegis call CA"},
		NotBefore:             caNotBefore,
		NotAfter:              caNotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign,
		SubjectKeyId:          skid[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("aegis: creating the call CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("aegis: parsing the call CA certificate: %w", err)
	}
	return &authority{cert: cert, key: priv}, nil
}

// mintLeaf returns a certificate for node signed by a, with a fresh key
// from crypto/rand, valid for both ends of a call connection from now
// minus leafBackdate to now plus leafLifetime. The chain holds the leaf
// only: every peer that trusts a derives its CA certificate itself.
func (a *authority) mintLeaf(node string, now time.Time) (*tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("aegis: generating the node key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("aegis: generating a certificate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: node},
		URIs:         []*url.URL{nodeURI(node)},
		NotBefore:    now.Add(-leafBackdate),
		NotAfter:     now.Add(leafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("aegis: creating the node certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("aegis: parsing the node certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, nil
}

// leafStale reports whether cert should be minted again at now: half of
// its lifetime has passed (or the clock went back before it was minted).
func leafStale(cert *tls.Certificate, now time.Time) bool {
	minted := cert.Leaf.NotBefore.Add(leafBackdate)
	return now.Before(cert.Leaf.NotBefore) || now.After(minted.Add(leafLifetime/2))
}
