// This file holds memConn, the in-memory stream between two MemTransports: a
// full-duplex net.Conn whose writes are buffered without bound, delayed by
// the network's latency and blackholed by its partitions.

package transport

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// endState is how one end of a stream stopped.
type endState uint8

const (
	endOpen    endState = iota
	endClosed           // Close: the peer reads EOF, its writes get EPIPE
	endAborted          // transport Shutdown: the peer gets ECONNRESET
)

// pipe is one direction of a stream: bytes written at one end, read at the
// other.
type pipe struct {
	mu      sync.Mutex
	chunks  []chunk // chunks[head:] are unread
	head    int
	spare   []byte // a fully read chunk's buffer, for the next write to reuse
	lastDue time.Time
	writer  endState
	reader  endState
	// changed holds a token when readers may proceed. A reader that took
	// the token passes it on while the pipe stays readable or has ended, so
	// several waiting readers all get their turn; a stale token only costs
	// a reader one more look.
	changed chan struct{}
}

// chunk is one Write's bytes (b[off:] still unread), readable from due on.
type chunk struct {
	b   []byte
	off int
	due time.Time
}

func newPipe() *pipe { return &pipe{changed: make(chan struct{}, 1)} }

// signalLocked wakes a reader waiting on p. p.mu is held.
func (p *pipe) signalLocked() {
	select {
	case p.changed <- struct{}{}:
	default: // a token is already there
	}
}

// settleLocked leaves a token for the next reader if something is left to
// read or the pipe has ended, and takes a stale one away otherwise. p.mu is
// held.
func (p *pipe) settleLocked() {
	if p.head < len(p.chunks) || p.writer != endOpen || p.reader != endOpen {
		p.signalLocked()
		return
	}
	select {
	case <-p.changed:
	default:
	}
}

// write queues a copy of b for delivery at due, or discards it when drop is
// set. It fails if the reading end has stopped.
func (p *pipe) write(b []byte, due time.Time, drop bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.reader {
	case endAborted:
		return syscall.ECONNRESET
	case endClosed:
		return syscall.EPIPE
	}
	if drop {
		return nil
	}
	if due.Before(p.lastDue) {
		due = p.lastDue // keep the stream in order when latency shrinks
	}
	p.lastDue = due
	buf := p.spare
	p.spare = nil
	if cap(buf) < len(b) {
		buf = make([]byte, 0, len(b))
	}
	if p.head > 0 && p.head >= len(p.chunks)/2 {
		// Move the unread chunks down rather than grow the slice forever.
		k := copy(p.chunks, p.chunks[p.head:])
		clear(p.chunks[k:])
		p.chunks, p.head = p.chunks[:k], 0
	}
	p.chunks = append(p.chunks, chunk{b: append(buf[:0], b...), due: due})
	p.signalLocked()
	return nil
}

// read copies due bytes into b. When nothing can be read yet it returns
// n == 0, err == nil, the channel that signals a change and, if a chunk is
// waiting for its delivery time, how long until then (else -1).
func (p *pipe) read(b []byte) (n int, wait time.Duration, changed <-chan struct{}, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.writer == endAborted {
		p.signalLocked() // for any other reader
		return 0, -1, nil, syscall.ECONNRESET
	}
	for p.head < len(p.chunks) && n < len(b) {
		head := &p.chunks[p.head]
		if d := time.Until(head.due); d > 0 {
			if n == 0 {
				return 0, d, p.changed, nil
			}
			break
		}
		k := copy(b[n:], head.b[head.off:])
		n += k
		head.off += k
		if head.off == len(head.b) {
			if cap(head.b) <= maxSpare && cap(head.b) > cap(p.spare) {
				p.spare = head.b[:0]
			}
			*head = chunk{}
			p.head++
		}
	}
	if n > 0 {
		p.settleLocked()
		return n, -1, nil, nil
	}
	if p.writer == endClosed {
		p.signalLocked() // for any other reader
		return 0, -1, nil, io.EOF
	}
	return 0, -1, p.changed, nil
}

// maxSpare bounds the buffer a pipe keeps for reuse.
const maxSpare = 64 << 10

// stopWriter records that the writing end stopped.
func (p *pipe) stopWriter(s endState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.writer = s
	if s == endAborted {
		p.chunks, p.head, p.spare = nil, 0, nil
	}
	p.signalLocked()
}

// stopReader records that the reading end stopped; unread bytes are
// discarded.
func (p *pipe) stopReader(s endState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reader = s
	p.chunks, p.head, p.spare = nil, 0, nil
	p.signalLocked()
}

// memConn is one end of an in-memory stream.
type memConn struct {
	nw                    *Network
	owner                 *MemTransport
	localNode, remoteNode string // gossip addresses, for partitions
	local, remote         *net.TCPAddr

	rx, tx *pipe
	rd, wd deadline

	once   sync.Once
	closed chan struct{}

	// callServer marks the accepting end of a DialCall stream: its writes
	// are responses, subject to Network.SetResponseLoss.
	callServer bool
}

var _ net.Conn = (*memConn)(nil)

// newConnPair connects a stream from transport from (local address laddr)
// to transport to (address raddr) and returns both ends.
func newConnPair(nw *Network, from, to *MemTransport, laddr, raddr *net.TCPAddr) (client, server *memConn) {
	up, down := newPipe(), newPipe()
	client = &memConn{
		nw: nw, owner: from,
		localNode: from.gossipAddr, remoteNode: to.gossipAddr,
		local: laddr, remote: raddr,
		rx: down, tx: up,
		closed: make(chan struct{}),
	}
	server = &memConn{
		nw: nw, owner: to,
		localNode: to.gossipAddr, remoteNode: from.gossipAddr,
		local: raddr, remote: laddr,
		rx: up, tx: down,
		closed: make(chan struct{}),
	}
	client.rd.init()
	client.wd.init()
	server.rd.init()
	server.wd.init()
	return client, server
}

// Read reads bytes the peer wrote once their latency has passed. It returns
// io.EOF after the peer's Close once everything before it was read, an
// error matching syscall.ECONNRESET once the peer's transport shut down, an
// error matching os.ErrDeadlineExceeded (a net.Error whose Timeout reports
// true) when the read deadline passes, and one matching net.ErrClosed after
// this end was closed.
func (c *memConn) Read(b []byte) (int, error) {
	for {
		if c.isClosed() {
			return 0, c.opErr("read", net.ErrClosed)
		}
		expired := c.rd.channel()
		select {
		case <-expired:
			return 0, c.opErr("read", os.ErrDeadlineExceeded)
		default:
		}
		if len(b) == 0 {
			return 0, nil
		}
		n, wait, changed, err := c.rx.read(b)
		switch {
		case err == io.EOF:
			return 0, io.EOF
		case err != nil:
			return 0, c.opErr("read", os.NewSyscallError("read", err))
		case n > 0:
			return n, nil
		}
		var timer *time.Timer
		var due <-chan time.Time
		if wait > 0 {
			timer = time.NewTimer(wait)
			due = timer.C
		}
		select {
		case <-changed:
		case <-due:
		case <-expired:
		case <-c.closed:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// Write queues b for the peer and never waits for it to read. While the two
// nodes are partitioned the bytes are silently discarded. It fails with an
// error matching syscall.EPIPE after the peer's Close, syscall.ECONNRESET
// after its transport shut down, os.ErrDeadlineExceeded once the write
// deadline has passed, and net.ErrClosed after this end was closed.
func (c *memConn) Write(b []byte) (int, error) {
	if c.isClosed() {
		return 0, c.opErr("write", net.ErrClosed)
	}
	select {
	case <-c.wd.channel():
		return 0, c.opErr("write", os.ErrDeadlineExceeded)
	default:
	}
	if len(b) == 0 {
		return 0, nil
	}
	if c.callServer && c.nw.loseResponse() {
		// The request was delivered and handled; the answer dies with the
		// connection, as when a peer's TCP stream is reset mid-call.
		c.shutdown(endAborted)
		return 0, c.opErr("write", os.NewSyscallError("write", syscall.ECONNRESET))
	}
	drop, latency := c.nw.route(c.localNode, c.remoteNode, false)
	if err := c.tx.write(b, time.Now().Add(latency), drop); err != nil {
		return 0, c.opErr("write", os.NewSyscallError("write", err))
	}
	return len(b), nil
}

// Close ends the stream: the peer reads what was already written and then
// io.EOF. A second Close returns an error matching net.ErrClosed.
func (c *memConn) Close() error {
	if !c.shutdown(endClosed) {
		return c.opErr("close", net.ErrClosed)
	}
	return nil
}

// shutdown stops this end with the given state, reporting whether it was
// still open.
func (c *memConn) shutdown(s endState) bool {
	first := false
	c.once.Do(func() {
		first = true
		c.tx.stopWriter(s)
		c.rx.stopReader(s)
		close(c.closed)
		c.rd.stop()
		c.wd.stop()
		c.owner.forget(c)
	})
	return first
}

// PeerClosed reports, without blocking, whether a Read would now fail or
// return io.EOF because the peer closed its end or its transport shut down
// (data still to be read counts as open). A client that leaves a stream
// unread while idle uses it to avoid sending on a dead stream.
func (c *memConn) PeerClosed() bool {
	p := c.rx
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.writer == endAborted || (p.writer == endClosed && p.head == len(p.chunks))
}

func (c *memConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// LocalAddr returns this end's address: for the dialing end the dialer's IP
// with an ephemeral port, for the accepting end the dialed address.
func (c *memConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the other end's LocalAddr.
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both the read and the write deadline.
func (c *memConn) SetDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opErr("set", net.ErrClosed)
	}
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

// SetReadDeadline sets when pending and future Reads fail; zero means never.
func (c *memConn) SetReadDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opErr("set", net.ErrClosed)
	}
	c.rd.set(t)
	return nil
}

// SetWriteDeadline sets when future Writes fail; zero means never. Writes
// never wait, so only a deadline already passed has an effect.
func (c *memConn) SetWriteDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opErr("set", net.ErrClosed)
	}
	c.wd.set(t)
	return nil
}

func (c *memConn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.local, Addr: c.remote, Err: err}
}

// deadline is a settable point in time exposed as a channel that is closed
// when it passes. A channel that has not fired is kept across set, so
// goroutines already waiting on it see the new time. One timer serves every
// deadline set, so setting one allocates nothing.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer // calls fire; nil until a deadline in the future is set
	when  time.Time   // the deadline; zero for none
	ch    chan struct{}
}

func (d *deadline) init() { d.ch = make(chan struct{}) }

// set moves the deadline to t; zero means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop() // a fire already under way finds the new d.when
	}
	d.when = t
	fired := isDone(d.ch)
	if t.IsZero() {
		if fired {
			d.ch = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if fired {
			d.ch = make(chan struct{})
		}
		if d.timer == nil {
			d.timer = time.AfterFunc(dur, d.fire)
		} else {
			d.timer.Reset(dur)
		}
		return
	}
	if !fired {
		close(d.ch)
	}
}

// fire closes the channel if the deadline now set has passed; a timer armed
// for an earlier setting finds nothing to do.
func (d *deadline) fire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.when.IsZero() || isDone(d.ch) {
		return
	}
	if left := time.Until(d.when); left > 0 {
		d.timer.Reset(left) // early by the wall clock (it was set back)
		return
	}
	close(d.ch)
}

// stop cancels a pending timer without firing it.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
	d.when = time.Time{}
}

// channel returns the channel closed when the current deadline passes.
func (d *deadline) channel() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// timeoutError is the error of a dial that timed out. Like net's own, its
// Timeout method reports true and it matches context.DeadlineExceeded; it
// also matches os.ErrDeadlineExceeded.
type timeoutError struct{}

var errTimeout error = timeoutError{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }
func (timeoutError) Is(target error) bool {
	return target == context.DeadlineExceeded || target == os.ErrDeadlineExceeded
}

// ctxErr maps a context's error to a dial error.
func ctxErr(err error) error {
	if err == context.DeadlineExceeded {
		return errTimeout
	}
	return err
}
