// This file holds the node's security setup: the gossip keyring and the
// mutual TLS of call connections, derived from SecretKey or taken from
// Config.TLS.

package aegis

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/aegisipc/aegis/internal/ratelog"
	"github.com/aegisipc/aegis/internal/tlsconf"
)

// setupSecurity builds the keyring (with SecretKey) and the call
// credentials (with SecretKey or Config.TLS).
func (n *Node) setupSecurity() error {
	c := &n.cfg
	if len(c.SecretKey) > 0 {
		kr, err := memberlist.NewKeyring(nil, c.SecretKey)
		if err != nil {
			return fmt.Errorf("aegis: SecretKey: %w", err)
		}
		n.keyring = kr
	}
	var err error
	switch {
	case c.TLS != nil:
		n.creds, err = tlsconf.NewFromUser(c.TLS, n.name)
	case n.keyring != nil:
		n.creds, err = tlsconf.NewDerived(n.name, n.keyringKeys)
	}
	if err != nil {
		return fmt.Errorf("aegis: call TLS: %w", err)
	}
	return nil
}

// keyringKeys reports the keyring's primary key and every installed key,
// for the derived call credentials.
func (n *Node) keyringKeys() (primary []byte, all [][]byte) {
	keys := n.keyring.GetKeys()
	if len(keys) == 0 {
		return nil, nil
	}
	return keys[0], keys
}

// callListener returns the listener the call server serves: the
// transport's, behind TLS when the node has credentials, so that only
// peers holding valid credentials reach a handler.
func (n *Node) callListener() net.Listener {
	l := n.tr.CallListener()
	if n.creds == nil {
		return l
	}
	warn := ratelog.New(n.log, time.Minute, 5)
	return n.creds.Listener(l, tlsconf.ListenerOptions{
		HandshakeTimeout: n.cfg.CallLimits.HandshakeTimeout,
		OnError: func(err error) {
			n.stats.tlsRefused.Add(1)
			warn.Warn("tls-refused", "refused a call connection", "err", err)
		},
	})
}

// secureDial runs the TLS handshake on a new call connection to addr,
// expecting the certificate of the member whose call address it is.
func (n *Node) secureDial(ctx context.Context, conn net.Conn, addr string) (net.Conn, error) {
	peer := n.gossip.nodeAt(addr)
	if peer == "" {
		_ = conn.Close()
		return nil, fmt.Errorf("aegis: no live member has call address %s; refusing to call it", addr)
	}
	tc, err := n.creds.DialTLS(ctx, conn, peer)
	if err != nil {
		return nil, err
	}
	return tc, nil
}
