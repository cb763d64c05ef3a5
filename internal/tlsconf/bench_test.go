// This file measures what TLS costs calls: a full mutual handshake, and a
// small round trip on an established connection against plain TCP.

package tlsconf

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkHandshake runs full mutual handshakes between two nodes with
// derived credentials: over net.Pipe for the CPU cost of both ends, and
// over loopback TCP through Listener and DialTLS.
func BenchmarkHandshake(b *testing.B) {
	r := newRing(key(1))
	srv, cli := derived(b, "srv", r), derived(b, "cli", r)
	b.Run("pipe", func(b *testing.B) {
		sconf, cconf := srv.Server(), cli.Client("srv")
		b.ReportAllocs()
		for b.Loop() {
			s, c := net.Pipe()
			errc := make(chan error, 1)
			go func() { errc <- tls.Server(s, sconf).Handshake() }()
			err := tls.Client(c, cconf).Handshake()
			require.NoError(b, err)
			require.NoError(b, <-errc)
			_ = s.Close()
			_ = c.Close()
		}
	})
	b.Run("tcp", func(b *testing.B) {
		inner, dial := listen(b, "tcp")
		l := srv.Listener(inner, ListenerOptions{})
		defer l.Close()
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				_ = conn.(*tls.Conn).NetConn().Close()
			}
		}()
		b.ReportAllocs()
		for b.Loop() {
			raw, err := dial()
			require.NoError(b, err)
			tc, err := cli.DialTLS(context.Background(), raw, "srv")
			require.NoError(b, err)
			_ = tc.NetConn().Close()
		}
	})
}

// BenchmarkRoundTrip sends 64 bytes and reads 64 back on an established
// loopback TCP connection, with TLS and without.
func BenchmarkRoundTrip(b *testing.B) {
	r := newRing(key(1))
	srv, cli := derived(b, "srv", r), derived(b, "cli", r)
	for _, mode := range []string{"tls", "plain"} {
		b.Run(mode, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(b, err)
			var l net.Listener = ln
			if mode == "tls" {
				l = srv.Listener(ln, ListenerOptions{})
			}
			defer l.Close()
			served := make(chan struct{})
			go func() {
				defer close(served)
				conn, err := l.Accept()
				if err != nil {
					return
				}
				defer conn.Close()
				buf := make([]byte, 64)
				for {
					if _, err := io.ReadFull(conn, buf); err != nil {
						return
					}
					if _, err := conn.Write(buf); err != nil {
						return
					}
				}
			}()
			conn, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(b, err)
			if mode == "tls" {
				conn, err = cli.DialTLS(context.Background(), conn, "srv")
				require.NoError(b, err)
			}
			defer func() { _ = conn.Close(); <-served }()
			buf := make([]byte, 64)
			b.ReportAllocs()
			for b.Loop() {
				_, err := conn.Write(buf)
				require.NoError(b, err)
				_, err = io.ReadFull(conn, buf)
				require.NoError(b, err)
			}
		})
	}
}
