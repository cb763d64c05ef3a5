// This file holds the grpc-go baseline with TLS: a self-signed ed25519
// certificate made at start (the same in a -split child, from a fixed
// seed) and TLS 1.3 transport credentials.

package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

var benchCert = sync.OnceValues(func() (tls.Certificate, error) {
	seed := sha256.Sum256([]byte("aegis compare grpc tls"))
	priv := ed25519.NewKeyFromSeed(seed[:])
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		DNSNames: []string{"bench"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
})

func serveGRPCTLS() (string, func(), error) {
	cert, err := benchCert()
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	srv := grpc.NewServer(grpc.Creds(creds))
	srv.RegisterService(&echoServiceDesc, struct{}{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return ln.Addr().String(), func() { srv.Stop(); <-done }, nil
}

func connectGRPCTLS(addr string) (*running, error) {
	cert, err := benchCert()
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return connectGRPCWith(addr, credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "bench", MinVersion: tls.VersionTLS13}))
}
