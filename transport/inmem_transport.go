// This file holds MemTransport, one node's Transport on an in-memory
// Network: packets, stream dialing, the call listener and Shutdown.

package transport

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// Buffer sizes of a MemTransport.
const (
	// PacketBuffer is how many packets wait for a MemTransport's reader
	// (PacketCh) before new ones are dropped. The same number of packets
	// may additionally be in flight when latency is set.
	PacketBuffer = 4096
	// StreamBacklog is how many dialed streams wait on StreamCh, and
	// separately in the call listener, before new dials are refused.
	StreamBacklog = 128
)

// MemTransport is a node's Transport on an in-memory Network; get one from
// Network.NewTransport or Network.NewMemTransport. It is safe for concurrent
// use.
//
// Its gossip address is the address it was created with; its call address
// is the same IP with port+1. Error behaviour:
//
//   - WriteTo never blocks and returns nil unless the transport is shut down
//     or the address is malformed. Packets to an unknown or shut down
//     address, across a partition, lost to SetLoss, or arriving when the
//     receiver already has PacketBuffer packets waiting are silently
//     dropped (see DroppedPackets).
//   - Dials (DialTimeout, DialAddressTimeout, DialCall) return *net.OpError
//     values. With no live transport at the address the error matches
//     syscall.ECONNREFUSED at once. Across a partition, or lost to SetLoss,
//     the dial blocks until its timeout or context ends and then fails
//     with an error whose Timeout method reports true and that matches
//     context.DeadlineExceeded and os.ErrDeadlineExceeded (or
//     context.Canceled when the context was cancelled). When the target
//     already has StreamBacklog streams waiting, the error matches
//     syscall.EAGAIN. Once this transport is shut down, dials fail with an
//     error matching net.ErrClosed.
//
// Streams are full-duplex net.Conns whose LocalAddr and RemoteAddr are
// *net.TCPAddr values (the dialing end has the dialer's IP and an ephemeral
// port). Writes never wait for the reader: bytes are queued without bound
// and become readable after the network's latency, in order. Deadlines work
// as on TCP. Errors, all *net.OpError except io.EOF:
//
//   - Read: io.EOF once the peer closed and everything it wrote before was
//     read; syscall.ECONNRESET (unread bytes discarded) once the peer's
//     transport shut down; os.ErrDeadlineExceeded, a net.Error whose
//     Timeout reports true, when the read deadline passes; net.ErrClosed
//     after this end was closed or its transport shut down.
//   - Write: syscall.EPIPE after the peer closed, syscall.ECONNRESET after
//     the peer's transport shut down, os.ErrDeadlineExceeded once the write
//     deadline has passed, net.ErrClosed after this end was closed. While
//     the two nodes are partitioned, writes succeed but the bytes are
//     discarded, so the peer's reads wait. A Close or Shutdown reaches the
//     peer even across a partition.
type MemTransport struct {
	nw         *Network
	ip         net.IP
	port       int
	gossipAddr string
	callAddr   string
	udpAddr    *net.UDPAddr // From of packets sent by this transport
	callTCP    *net.TCPAddr

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	inbox    inbox
	listener *memListener
	dropped  atomic.Uint64

	mu     sync.Mutex
	closed bool                  // guarded by mu; also listener.closed
	conns  map[*memConn]struct{} // streams to abort on Shutdown

	done         chan struct{} // closed by Shutdown
	wg           sync.WaitGroup
	shutdownOnce sync.Once
}

var _ Transport = (*MemTransport)(nil)

// newMemTransport builds an unregistered, unstarted transport.
func newMemTransport(nw *Network, ap netip.AddrPort) *MemTransport {
	ip := net.IP(ap.Addr().AsSlice())
	port := int(ap.Port())
	callAP := netip.AddrPortFrom(ap.Addr(), ap.Port()+1)
	t := &MemTransport{
		nw:         nw,
		ip:         ip,
		port:       port,
		gossipAddr: ap.String(),
		callAddr:   callAP.String(),
		udpAddr:    &net.UDPAddr{IP: ip, Port: port},
		callTCP:    &net.TCPAddr{IP: ip, Port: port + 1},
		packetCh:   make(chan *memberlist.Packet, PacketBuffer),
		streamCh:   make(chan net.Conn, StreamBacklog),
		conns:      make(map[*memConn]struct{}),
		done:       make(chan struct{}),
	}
	t.inbox.init(t.packetCh, &t.dropped)
	t.listener = &memListener{
		t:    t,
		ch:   make(chan net.Conn, StreamBacklog),
		done: make(chan struct{}),
	}
	return t
}

// start launches the packet delivery goroutine.
func (t *MemTransport) start() {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		t.inbox.run(t.done)
	}()
}

// GossipAddr returns the "ip:port" the transport was created with, which
// peers pass to memberlist's Join.
func (t *MemTransport) GossipAddr() string { return t.gossipAddr }

// DroppedPackets returns how many packets addressed to this transport were
// dropped because its buffer was full.
func (t *MemTransport) DroppedPackets() uint64 { return t.dropped.Load() }

// FinalAdvertiseAddr implements memberlist.Transport. It always returns the
// transport's own IP and port, ignoring memberlist's advertise settings:
// nothing else is reachable on the in-memory network.
func (t *MemTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.ip, t.port, nil
}

// WriteTo implements memberlist.Transport; see MemTransport for when packets
// are dropped.
func (t *MemTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	now := time.Now()
	if t.isShutdown() {
		return now, &net.OpError{Op: "write", Net: "udp", Source: t.udpAddr, Err: net.ErrClosed}
	}
	ap, err := parseAddr(addr)
	if err != nil {
		return now, &net.OpError{Op: "write", Net: "udp", Source: t.udpAddr,
			Err: &net.AddrError{Err: "invalid address", Addr: addr}}
	}
	to := ap.String()
	t.nw.mu.RLock()
	dst := t.nw.gossip[to]
	drop := dst == nil || t.nw.droppedLocked(t.gossipAddr, to, true)
	latency := t.nw.latency
	t.nw.mu.RUnlock()
	if drop {
		return now, nil
	}
	dst.inbox.push(&memberlist.Packet{Buf: bytes.Clone(b), From: t.udpAddr}, now.Add(latency))
	return now, nil
}

// WriteToAddress implements memberlist.NodeAwareTransport; the node name is
// not used.
func (t *MemTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, addr.Addr)
}

// PacketCh implements memberlist.Transport. It is never closed.
func (t *MemTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// StreamCh implements memberlist.Transport. It is never closed; streams
// still in it when the transport shuts down are already aborted.
func (t *MemTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// DialTimeout implements memberlist.Transport: it opens a gossip stream to
// the transport whose gossip address is addr. A timeout <= 0 means none.
func (t *MemTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.dial(context.Background(), timeout, addr, false)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport; the node name
// is not used.
func (t *MemTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(addr.Addr, timeout)
}

// DialCall implements Transport: it opens a stream to the call listener of
// the transport whose call address is addr.
func (t *MemTransport) DialCall(ctx context.Context, addr string) (net.Conn, error) {
	return t.dial(ctx, 0, addr, true)
}

// CallListener implements Transport.
func (t *MemTransport) CallListener() net.Listener { return t.listener }

// CallAddr implements Transport. It is the gossip address with port+1.
func (t *MemTransport) CallAddr() string { return t.callAddr }

// Shutdown implements memberlist.Transport. It detaches the transport from
// the network (its address can be reused), stops packet delivery, closes
// the call listener, aborts every stream it dialed or accepted (their peers
// see syscall.ECONNRESET) and ends pending dials. It leaves no goroutine
// behind. Calling it again does nothing and returns nil.
func (t *MemTransport) Shutdown() error {
	t.shutdownOnce.Do(func() {
		t.nw.remove(t)
		_ = t.listener.Close()
		t.mu.Lock()
		t.closed = true
		close(t.done)
		conns := t.conns
		t.conns = nil
		t.mu.Unlock()
		for c := range conns {
			c.shutdown(endAborted)
		}
		t.wg.Wait()
	})
	return nil
}

// isShutdown reports whether Shutdown has started.
func (t *MemTransport) isShutdown() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// dial opens a gossip stream (call false) or call stream (call true) to addr.
func (t *MemTransport) dial(ctx context.Context, timeout time.Duration, addr string, call bool) (net.Conn, error) {
	ap, err := parseAddr(addr)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &net.AddrError{Err: "invalid address", Addr: addr}}
	}
	raddr := net.TCPAddrFromAddrPort(ap)
	fail := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: raddr, Err: err}
	}
	if t.isShutdown() {
		return nil, fail(net.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fail(ctxErr(err))
	}

	// The node behind the address, for partitions and loss.
	key, node := ap.String(), ap.String()
	if call {
		node = ""
		if ap.Port() > 1 {
			node = netip.AddrPortFrom(ap.Addr(), ap.Port()-1).String()
		}
	}
	t.nw.mu.RLock()
	blocked := node != "" && t.nw.droppedLocked(t.gossipAddr, node, true)
	dst := t.nw.gossip[key]
	if call {
		dst = t.nw.calls[key]
	}
	t.nw.mu.RUnlock()

	if blocked {
		return nil, fail(t.blackhole(ctx, timeout))
	}
	if dst == nil {
		return nil, fail(os.NewSyscallError("connect", syscall.ECONNREFUSED))
	}

	laddr := &net.TCPAddr{IP: t.ip, Port: t.nw.nextEphemeral()}
	client, server := newConnPair(t.nw, t, dst, laddr, raddr)
	server.callServer = call
	if !t.track(client) {
		return nil, fail(net.ErrClosed)
	}
	if err := dst.accept(server, call); err != nil {
		client.shutdown(endClosed)
		return nil, fail(err)
	}
	return client, nil
}

// blackhole waits out a dial that will never be answered and returns why it
// ended.
func (t *MemTransport) blackhole(ctx context.Context, timeout time.Duration) error {
	var expired <-chan time.Time
	if timeout > 0 {
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case <-expired:
		return errTimeout
	case <-ctx.Done():
		return ctxErr(ctx.Err())
	case <-t.done:
		return net.ErrClosed
	}
}

// track records a stream end owned by t, or returns false after Shutdown.
func (t *MemTransport) track(c *memConn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

// forget drops a closed stream end.
func (t *MemTransport) forget(c *memConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, c) // no-op on the nil map after Shutdown
}

// accept takes the server end of a new stream onto StreamCh (gossip) or the
// call listener's queue.
func (t *MemTransport) accept(c *memConn, call bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || (call && t.listener.closed) {
		return os.NewSyscallError("connect", syscall.ECONNREFUSED)
	}
	queue := t.streamCh
	if call {
		queue = t.listener.ch
	}
	select {
	case queue <- c:
		t.conns[c] = struct{}{}
		return nil
	default:
		return os.NewSyscallError("connect", syscall.EAGAIN)
	}
}

// memListener is a MemTransport's call listener.
type memListener struct {
	t      *MemTransport
	ch     chan net.Conn
	done   chan struct{} // closed by Close
	closed bool          // guarded by t.mu
}

// Accept waits for the next call stream. After Close or Shutdown it returns
// an error matching net.ErrClosed.
func (l *memListener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, l.closedErr()
	default:
	}
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, l.closedErr()
	}
}

// Close stops the listener: pending and later Accepts fail, streams queued
// for Accept are aborted and new DialCalls are refused. A second Close
// returns an error matching net.ErrClosed.
func (l *memListener) Close() error {
	l.t.mu.Lock()
	if l.closed {
		l.t.mu.Unlock()
		return l.closedErr()
	}
	l.closed = true
	close(l.done)
	var queued []net.Conn
	for drained := false; !drained; {
		select {
		case c := <-l.ch:
			queued = append(queued, c)
		default:
			drained = true
		}
	}
	l.t.mu.Unlock()
	for _, c := range queued {
		c.(*memConn).shutdown(endAborted)
	}
	return nil
}

// Addr returns the call address as a *net.TCPAddr.
func (l *memListener) Addr() net.Addr { return l.t.callTCP }

func (l *memListener) closedErr() error {
	return &net.OpError{Op: "accept", Net: "tcp", Addr: l.t.callTCP, Err: net.ErrClosed}
}
