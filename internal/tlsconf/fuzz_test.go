// This file fuzzes the server handshake with arbitrary first flights.

package tlsconf

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// captureClientHello returns the first flight (one record holding the
// ClientHello) of a real client of these credentials.
func captureClientHello(t testing.TB, cli *Creds) []byte {
	t.Helper()
	s, c := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(c, cli.Client("srv")).Handshake()
		_ = c.Close()
	}()
	defer func() { <-done }()
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(testWait))
	hdr := make([]byte, 5)
	_, err := io.ReadFull(s, hdr)
	require.NoError(t, err)
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	_, err = io.ReadFull(s, body)
	require.NoError(t, err)
	return append(hdr, body...)
}

func FuzzServerHandshake(f *testing.F) {
	r := newRing(key(1))
	srv, cli := derived(f, "srv", r), derived(f, "cli", r)
	hello := captureClientHello(f, cli)
	f.Add(hello)
	f.Add(hello[:len(hello)/2])
	f.Add(append(append([]byte(nil), hello...), 0x17, 0x03, 0x03, 0x00, 0x01, 0x00))
	f.Add([]byte{})
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{0x16, 0x03, 0x01, 0xff, 0xff})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	conf := srv.Server()
	f.Fuzz(func(t *testing.T, data []byte) {
		s, c := net.Pipe()
		deadline := time.Now().Add(time.Second)
		_ = s.SetDeadline(deadline)
		_ = c.SetDeadline(deadline)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // drain the server's writes, so that they never block
			defer wg.Done()
			_, _ = io.Copy(io.Discard, c)
		}()
		go func() { // send data, then end the stream
			defer wg.Done()
			_, _ = c.Write(data)
			_ = c.Close()
		}()
		err := tls.Server(s, conf).Handshake()
		_ = s.Close()
		wg.Wait()
		require.Error(t, err)
	})
}
