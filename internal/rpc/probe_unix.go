//go:build unix

// This file probes an idle connection for a close by its peer: sockets by a non-blocking peek.

package rpc

import (
	"net"
	"syscall"
)

// peerClosed reports whether the peer has closed conn, without blocking and
// without consuming data: data already buffered (a late response) means the
// connection is open; otherwise a non-blocking peek at the socket tells.
// Connections that are not sockets are asked through PeerClosed if they
// have it, and are otherwise assumed open.
func peerClosed(conn net.Conn, fr *frameReader) bool {
	if fr.midFrame() {
		return false
	}
	switch c := conn.(type) {
	case interface{ PeerClosed() bool }:
		return c.PeerClosed()
	case syscall.Conn:
		rc, err := c.SyscallConn()
		if err != nil {
			return false
		}
		closed := false
		var b [1]byte
		err = rc.Read(func(fd uintptr) bool {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			closed = (n == 0 && err == nil) || (err != nil && err != syscall.EAGAIN && err != syscall.EINTR)
			return true
		})
		return closed || err != nil
	}
	return false
}
