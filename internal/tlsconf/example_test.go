// This file shows the package's main entry points at work.

package tlsconf_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/aegisipc/aegis/internal/tlsconf"
)

// Two nodes sharing a secret key call each other over mutual TLS; each
// learns who is at the other end.
func ExampleNewDerived() {
	secret := []byte("0123456789abcdef0123456789abcdef")
	keys := func() ([]byte, [][]byte) { return secret, [][]byte{secret} }
	alpha, err := tlsconf.NewDerived("alpha", keys)
	if err != nil {
		panic(err)
	}
	beta, err := tlsconf.NewDerived("beta", keys)
	if err != nil {
		panic(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	l := beta.Listener(ln, tlsconf.ListenerOptions{HandshakeTimeout: 5 * time.Second})
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := l.Accept() // only verified peers get here
		if err != nil {
			return
		}
		defer conn.Close()
		caller, _ := beta.PeerNode(conn.(*tls.Conn).ConnectionState())
		fmt.Println("beta was called by", caller)
	}()

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := alpha.DialTLS(ctx, raw, "beta") // refuses anyone but beta
	if err != nil {
		panic(err)
	}
	<-done
	callee, _ := alpha.PeerNode(conn.ConnectionState())
	fmt.Println("alpha called", callee)
	_ = conn.Close()
	// Output:
	// beta was called by alpha
	// alpha called beta
}
