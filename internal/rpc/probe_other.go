//go:build !unix

// This file probes an idle connection for a close by its peer where sockets cannot be peeked.

package rpc

import "net"

// peerClosed asks conn through PeerClosed if it has it; sockets cannot be
// probed here and are assumed open.
func peerClosed(conn net.Conn, fr *frameReader) bool {
	if fr.midFrame() {
		return false
	}
	if c, ok := conn.(interface{ PeerClosed() bool }); ok {
		return c.PeerClosed()
	}
	return false
}
