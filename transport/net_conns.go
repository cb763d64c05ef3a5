// This file holds connSet, which remembers the TCP streams a Net dialed or
// accepted so that Shutdown can close them, without wrapping the streams
// (callers get the plain *net.TCPConn).

package transport

import (
	"net"
	"sync"
	"syscall"
)

// minPrune is the set size below which connSet never looks for closed
// streams.
const minPrune = 64

// connSet is a set of streams that forgets streams closed by their users.
// Because the streams are not wrapped, it cannot see Close; instead, when the
// set has doubled since the last sweep, add drops the streams that are
// already closed, which keeps the set proportional to the open streams at
// amortised constant cost.
type connSet struct {
	mu      sync.Mutex
	closed  bool
	conns   map[net.Conn]struct{}
	pruneAt int
}

// add records c, or returns false if closeAll has already run.
func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	if len(s.conns) >= max(s.pruneAt, minPrune) {
		for old := range s.conns {
			if isClosed(old) {
				delete(s.conns, old)
			}
		}
		s.pruneAt = 2 * len(s.conns)
	}
	s.conns[c] = struct{}{}
	return true
}

// len reports how many streams the set holds.
func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// closeAll closes every recorded stream; later adds fail.
func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.closed = true
	s.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}

// isClosed reports whether c's socket has been closed: the runtime refuses
// raw access to a closed descriptor.
func isClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	return raw.Control(func(uintptr) {}) != nil
}
