// This file holds the calling side: the Client and its one multiplexed connection per peer address.

package rpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// DefaultDialTimeout bounds a connection attempt made by the default dialer.
const DefaultDialTimeout = 10 * time.Second

// maxRedials is how many times Call replaces a connection that died before
// the request was written to it.
const maxRedials = 2

var errNilRequest = errors.New("rpc: nil request")

// ClientOptions configures a Client. The zero value is usable.
type ClientOptions struct {
	// MaxFrameSize bounds request frames sent and response frames accepted,
	// counted as the length prefix value (everything after the 4-byte
	// prefix). 0 means DefaultMaxFrameSize; smaller positive values are
	// raised to MinMaxFrameSize.
	MaxFrameSize int
	// Dial opens a connection to a peer's call listener. nil dials TCP with
	// DefaultDialTimeout. The ctx passed ends when the Client is closed.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// IdleTimeout is how long a connection may go without calls before the
	// next call closes it and dials anew instead of using it. Keep it below
	// the peers' ServerOptions.IdleTimeout: a call sent just as the server
	// closes the connection for idleness would fail with ErrConnLost. 0
	// means DefaultClientIdleTimeout (1 minute, half the server's default);
	// negative means connections are used however long they idled.
	IdleTimeout time.Duration
}

// DefaultClientIdleTimeout is the IdleTimeout used when ClientOptions
// leaves it zero.
const DefaultClientIdleTimeout = time.Minute

// Client calls peers. It keeps one connection per peer address, shared by
// all concurrent calls to that peer. It is safe for concurrent use.
type Client struct {
	maxFrame    int
	idleTimeout time.Duration // 0 = none
	dial        func(ctx context.Context, addr string) (net.Conn, error)
	ctx         context.Context // ends on Close; bounds dials
	cancel      context.CancelFunc

	mu     sync.RWMutex
	conns  map[string]*clientConn
	closed bool

	wg sync.WaitGroup // dialers and readers
}

// NewClient returns a Client with the given options.
func NewClient(opts ClientOptions) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		maxFrame:    normMaxFrame(opts.MaxFrameSize),
		idleTimeout: orDefault(opts.IdleTimeout, DefaultClientIdleTimeout),
		dial:        opts.Dial,
		ctx:         ctx,
		cancel:      cancel,
		conns:       make(map[string]*clientConn),
	}
	if c.dial == nil {
		c.dial = defaultDial
	}
	return c
}

func defaultDial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: DefaultDialTimeout}
	return d.DialContext(ctx, "tcp", addr)
}

// call is one waiting caller. Calls are pooled; ch has capacity 1 so the
// reader never blocks handing over a result.
type call struct {
	ch chan result
}

type result struct {
	resp Response
	err  error
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan result, 1)} }}

// clientConn is the connection to one peer address. Requests go out through
// the batching writer. Reading responses is a role: a caller that finds
// nobody reading reads itself (so a lone caller is woken straight by the
// network poller, as with a plain socket, instead of by another goroutine)
// and passes responses that are not its own to their callers. When it has
// its own response and others still wait, a reader goroutine takes the role
// over until none waits.
type clientConn struct {
	client *Client
	addr   string

	ready   chan struct{} // closed once the dial finished
	dialErr error         // set before ready is closed; nil if conn is usable
	conn    net.Conn      // set under client.mu before ready is closed

	w  frameWriter
	fr *frameReader // used only by whoever holds the reader role

	mu      sync.Mutex
	pending map[uint64]*call
	nextID  uint64
	err     error // set once the connection is dead; nothing registers after
	reading bool  // a goroutine holds the reader role
	// idleSince is when the role was last dropped with no call waiting; a
	// caller taking the role after idleProbeAfter first checks that the
	// peer has not closed the connection meanwhile.
	idleSince time.Time
}

// idleProbeAfter is how long a connection may sit unread before a caller
// probes it for a close by the peer before sending on it. While nobody reads
// a connection, nobody notices its peer closing it; sending a request on it
// anyway would make the request's fate unknown (ErrConnLost) where a fresh
// dial tells for sure (ErrDial).
const idleProbeAfter = time.Millisecond

// Call sends req to the peer at addr and waits for its response or ctx's
// end. The Client assigns req's call ID; req is not modified and may be
// reused once Call returns. The timeout sent to the handler is the smaller of
// req.Timeout (if positive) and the time left before ctx's deadline.
//
// A peer-reported failure (including CodeFrameTooLarge, CodePanic) comes back
// as a Response whose Err is set, with a nil error. The error is non-nil when
// no response was received:
//   - ErrDial: no connection could be opened; the request was not delivered.
//   - ErrFrameTooLarge: the request exceeded MaxFrameSize and was not sent,
//     or the response exceeded it and was discarded.
//   - ErrConnLost: the connection broke after the request may have been
//     written; it may have been delivered.
//   - ErrClosed: the Client was closed.
//   - ErrTimeout: req.Timeout passed first; a late response is dropped.
//   - ctx.Err() (wrapped) when ctx ended first; a late response is dropped.
//     If ctx ended (or req.Timeout passed) while the connection was still
//     being opened, the error also matches ErrDial: the request was not
//     sent.
func (c *Client) Call(ctx context.Context, addr string, req *Request) (Response, error) {
	if req == nil {
		return Response{}, errNilRequest
	}
	timeout, err := callTimeout(ctx, addr, req)
	if err != nil {
		return Response{}, err
	}
	// req.Timeout bounds the call with a pooled timer, when it is what
	// expires first.
	var expired <-chan time.Time
	if req.Timeout > 0 && int64(req.Timeout) <= timeout {
		t := getTimer(req.Timeout)
		defer putTimer(t)
		expired = t.C
	}
	// The frame's size but for the call ID, which takes 1 to 9 bytes.
	sizeNoID := requestFrameLen(req, 0, timeout) - 1
	if sizeNoID+1 > c.maxFrame {
		return Response{}, frameTooLarge(sizeNoID+1, c.maxFrame)
	}
	cl := callPool.Get().(*call)
	r, reusable := c.roundTrip(ctx, expired, addr, req, cl, timeout, sizeNoID)
	if reusable {
		callPool.Put(cl)
	} // else a reader may still hand a late result to cl: leave it to the GC
	return r.resp, r.err
}

// callTimeout returns the time limit to send with req, in nanoseconds (0
// for none): the smaller of req.Timeout and what is left of ctx. It fails
// if ctx has ended.
func callTimeout(ctx context.Context, addr string, req *Request) (int64, error) {
	var timeout int64
	if req.Timeout > 0 {
		timeout = int64(req.Timeout)
	}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return 0, ctxError(req, addr, context.DeadlineExceeded)
		}
		if timeout == 0 || int64(left) < timeout {
			timeout = int64(left)
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, ctxError(req, addr, err)
	}
	return timeout, nil
}

// roundTrip sends req to addr and waits for its outcome, which arrives on
// cl. sizeNoID is the request frame's size but for the call ID. It reports
// whether cl may be reused: not if a reader may still send to it.
func (c *Client) roundTrip(ctx context.Context, expired <-chan time.Time, addr string, req *Request,
	cl *call, timeout int64, sizeNoID int) (result, bool) {
	cc, id, err := c.send(ctx, expired, addr, req, cl, timeout, sizeNoID)
	if err != nil {
		return result{err: err}, true
	}
	if cc.takeRole(id) {
		return cc.lead(ctx, cl, id, req, timeout), true
	}
	// Whoever's write fails (this goroutine's or a batch writer's) fails the
	// connection, which hands ErrConnLost to every registered call; so the
	// outcome always arrives on cl.ch.
	select {
	case r := <-cl.ch:
		return r, true
	case <-ctx.Done():
		return result{err: ctxError(req, addr, ctx.Err())}, cc.abandon(id)
	case <-expired:
		return result{err: timeoutError(req, addr)}, cc.abandon(id)
	}
}

// send registers cl on the live connection to addr, dialing it if needed,
// and queues req's frame on it; it returns the connection and the call ID.
// A connection that died before the frame was queued (so nothing of this
// call was written to it) is forgotten and dialed again, up to maxRedials
// times.
func (c *Client) send(ctx context.Context, expired <-chan time.Time, addr string, req *Request,
	cl *call, timeout int64, sizeNoID int) (*clientConn, uint64, error) {
	for tries := 0; ; tries++ {
		cc, err := c.conn(ctx, expired, addr, req)
		if err != nil {
			return nil, 0, err
		}
		id, busy, err := cc.register(cl)
		if err == nil {
			if n := sizeNoID + uintSize(id); n > c.maxFrame {
				cc.withdraw(id, cl)
				return nil, 0, frameTooLarge(n, c.maxFrame)
			}
			if err = cc.w.lock(); err == nil {
				cc.w.buf = appendRequestFrame(cc.w.buf, req, id, timeout)
				_ = cc.w.commit(busy)
				return cc, id, nil
			}
			cc.withdraw(id, cl)
		}
		c.forget(cc)
		if errors.Is(err, ErrClosed) {
			return nil, 0, err
		}
		if tries == maxRedials {
			return nil, 0, fmt.Errorf("%w: %s: connection failed before the request was sent: %v", ErrDial, addr, err)
		}
	}
}

func timeoutError(req *Request, addr string) error {
	return fmt.Errorf("%w: %s.%s on %s: no response within %v", ErrTimeout, req.Service, req.Method, addr, req.Timeout)
}

// timerPool recycles the timers that bound calls. Since Go 1.23 a stopped
// timer's channel holds no stale tick, so Reset after Stop is safe.
var timerPool sync.Pool

func getTimer(d time.Duration) *time.Timer {
	if t, ok := timerPool.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func putTimer(t *time.Timer) {
	t.Stop()
	timerPool.Put(t)
}

func frameTooLarge(n, limit int) error {
	return fmt.Errorf("%w: request frame of %d bytes exceeds the limit of %d bytes", ErrFrameTooLarge, n, limit)
}

func ctxError(req *Request, addr string, err error) error {
	return fmt.Errorf("rpc: call %s.%s on %s: %w", req.Service, req.Method, addr, err)
}

// conn returns the live connection to addr, dialing it if there is none.
func (c *Client) conn(ctx context.Context, expired <-chan time.Time, addr string, req *Request) (*clientConn, error) {
	c.mu.RLock()
	cc, closed := c.conns[addr], c.closed
	c.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if cc == nil {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if cc = c.conns[addr]; cc == nil {
			cc = &clientConn{
				client:  c,
				addr:    addr,
				ready:   make(chan struct{}),
				pending: make(map[uint64]*call),
			}
			c.conns[addr] = cc
			c.wg.Add(1)
			go c.dialConn(cc)
		}
		c.mu.Unlock()
	}
	select {
	case <-cc.ready:
	default:
		select {
		case <-cc.ready:
		case <-ctx.Done():
			// Still connecting: the request was not sent.
			return nil, fmt.Errorf("%w: %w", ErrDial, ctxError(req, addr, ctx.Err()))
		case <-expired:
			return nil, fmt.Errorf("%w: %w", ErrDial, timeoutError(req, addr))
		}
	}
	if cc.dialErr != nil {
		return nil, cc.dialErr
	}
	if cc.staleWhileIdle() {
		c.forget(cc)
		cc.fail(fmt.Errorf("%w: %s: closed by the peer while idle", ErrConnLost, addr))
		return c.conn(ctx, expired, addr, req)
	}
	return cc, nil
}

// staleWhileIdle reports whether cc, unread for idleProbeAfter with no call
// waiting, must not be used: it idled for the Client's IdleTimeout (it is
// then closed here, before any call can register on it) or a probe finds
// that the peer closed it.
func (cc *clientConn) staleWhileIdle() bool {
	cc.mu.Lock()
	var idleFor time.Duration
	if !cc.reading && len(cc.pending) == 0 && cc.err == nil && !cc.idleSince.IsZero() {
		idleFor = time.Since(cc.idleSince)
	}
	if limit := cc.client.idleTimeout; limit > 0 && idleFor >= limit {
		err := fmt.Errorf("%w: %s: closed after idling for %v", ErrConnLost, cc.addr, limit)
		cc.err, cc.pending = err, nil // nothing was pending
		cc.mu.Unlock()
		cc.teardown(err, nil)
		return true
	}
	idle := idleFor > idleProbeAfter
	if idle {
		// Nobody can take the role while it is probed.
		cc.reading = true
	}
	cc.mu.Unlock()
	if !idle {
		return false
	}
	closed := peerClosed(cc.conn, cc.fr)
	cc.mu.Lock()
	// Calls that registered meanwhile found the role taken and wait: they
	// need a reader.
	cc.dropRoleLocked()
	cc.mu.Unlock()
	return closed
}

// dialConn dials cc's peer on its own goroutine, so that a caller whose ctx
// ends does not fail the dial for others waiting on it.
func (c *Client) dialConn(cc *clientConn) {
	defer c.wg.Done()
	conn, err := c.dial(c.ctx, cc.addr)
	c.mu.Lock()
	switch {
	case c.closed:
		cc.dialErr = ErrClosed
	case err != nil:
		cc.dialErr = fmt.Errorf("%w: %s: %w", ErrDial, cc.addr, err)
	case c.conns[cc.addr] != cc:
		cc.dialErr = fmt.Errorf("%w: %s: connection dropped while dialing", ErrDial, cc.addr)
	default:
		cc.conn = conn
		cc.w.conn = conn
		cc.w.onError = cc.writeFailed
		cc.fr = newFrameReader(conn, c.maxFrame, KindResponse)
	}
	if cc.dialErr != nil && c.conns[cc.addr] == cc {
		delete(c.conns, cc.addr)
	}
	c.mu.Unlock()
	if cc.dialErr != nil && conn != nil {
		_ = conn.Close()
	}
	close(cc.ready)
}

// forget removes cc from the connection map if it is still there, so the
// next call to its address dials again.
func (c *Client) forget(cc *clientConn) {
	c.mu.Lock()
	if c.conns[cc.addr] == cc {
		delete(c.conns, cc.addr)
	}
	c.mu.Unlock()
}

// CloseAddr drops the connection to addr, if any (e.g. because the peer
// failed). Calls in flight on it fail with ErrConnLost; the next call to addr
// dials again.
func (c *Client) CloseAddr(addr string) {
	c.mu.Lock()
	cc := c.conns[addr]
	var live bool
	if cc != nil {
		delete(c.conns, addr)
		live = cc.conn != nil
	}
	c.mu.Unlock()
	if live {
		cc.fail(fmt.Errorf("%w: %s: connection dropped by CloseAddr", ErrConnLost, addr))
	}
}

// Close closes every connection, fails calls in flight with ErrClosed and
// waits for the Client's goroutines to end. Later calls fail with ErrClosed.
// It is safe to call more than once.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	var live []*clientConn
	for _, cc := range c.conns {
		if cc.conn != nil {
			live = append(live, cc)
		}
	}
	c.conns = make(map[string]*clientConn)
	c.mu.Unlock()
	c.cancel() // ends dials in progress; they see closed and give up
	for _, cc := range live {
		cc.fail(ErrClosed)
	}
	c.wg.Wait()
	return nil
}

// register adds cl to the pending calls and returns its new call ID, and
// whether other calls are pending.
func (cc *clientConn) register(cl *call) (id uint64, busy bool, err error) {
	cc.mu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		return 0, false, err
	}
	cc.nextID++
	id = cc.nextID
	cc.pending[id] = cl
	busy = len(cc.pending) > 1
	cc.mu.Unlock()
	return id, busy, nil
}

// withdraw takes call id, whose frame was not queued, off the pending
// calls. If the connection failed meanwhile and is handing cl its error, it
// takes that error, so that cl can be reused.
func (cc *clientConn) withdraw(id uint64, cl *call) {
	cc.mu.Lock()
	_, ok := cc.pending[id]
	if ok {
		delete(cc.pending, id)
	}
	cc.mu.Unlock()
	if !ok {
		<-cl.ch
	}
}

// abandon gives up waiting for call id, whose request was sent. The call
// stays pending without a caller (a nil entry) until its response comes and
// is dropped: the connection keeps a reader while a response is on its way,
// so that it never clogs with answers nobody reads (which, on a transport
// without buffering, would block the server's writes and then its reads).
// It reports false if the call was no longer there (its result is being
// delivered).
func (cc *clientConn) abandon(id uint64) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if _, ok := cc.pending[id]; !ok {
		return false
	}
	cc.pending[id] = nil
	return true
}

// deliver hands r to the caller waiting for call id, if it still waits.
func (cc *clientConn) deliver(id uint64, r result) {
	cc.mu.Lock()
	cl := cc.pending[id]
	delete(cc.pending, id)
	cc.mu.Unlock()
	if cl != nil {
		cl.ch <- r // capacity 1, and only one sender per registration
	}
}

// fail marks the connection dead with err (the first error wins), closes it,
// fails every pending call with err and forgets the connection.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	cc.err = err
	pending := cc.pending
	cc.pending = nil
	cc.mu.Unlock()
	cc.teardown(err, pending)
}

// teardown closes the connection, which failed with err, hands err to the
// calls that were pending on it and forgets it.
func (cc *clientConn) teardown(err error, pending map[uint64]*call) {
	cc.w.shutdown(err)
	_ = cc.conn.Close()
	for _, cl := range pending {
		if cl != nil { // nil: abandoned
			cl.ch <- result{err: err}
		}
	}
	cc.client.forget(cc)
}

func (cc *clientConn) writeFailed(err error) {
	cc.fail(fmt.Errorf("%w: %s: write: %w", ErrConnLost, cc.addr, err))
}

// takeRole makes the caller of call id the reader if nobody reads cc and
// its response has not already been handed to it.
func (cc *clientConn) takeRole(id uint64) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if _, waiting := cc.pending[id]; cc.reading || !waiting {
		return false
	}
	cc.reading = true
	return true
}

// dropRoleLocked gives the reader role up: to a reader goroutine if calls still
// wait, else to nobody. The caller holds cc.mu and the role.
func (cc *clientConn) dropRoleLocked() {
	if len(cc.pending) > 0 && cc.err == nil {
		cc.client.wg.Add(1)
		go cc.readLoop()
		return
	}
	cc.reading = false
	cc.idleSince = time.Now()
}

// lead reads responses, as the holder of the reader role, until call id's
// own arrives, the connection fails, or ctx or the call's timeout ends it.
// timeout (nanoseconds, 0 for none) is the smaller of req.Timeout and what
// is left of ctx.
func (cc *clientConn) lead(ctx context.Context, cl *call, id uint64, req *Request, timeout int64) result {
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(time.Duration(timeout))
	}
	if done := ctx.Done(); done != nil {
		// A read cannot watch ctx: ctx's end interrupts it through a
		// deadline in the past.
		stop := context.AfterFunc(ctx, cc.interruptRead)
		defer stop()
	}
	// Setting the read deadline can undo an interruption ctx's end made a
	// moment before; ctx is checked after it, so such an end interrupts
	// the read again (ctx.Err is set before AfterFunc runs).
	setDeadline := func() {
		_ = cc.conn.SetReadDeadline(deadline)
		if ctx.Err() != nil {
			cc.interruptRead()
		}
	}
	setDeadline()
	for {
		fid, r, err := cc.readResponse()
		switch {
		case err == nil && fid == id:
			cc.mu.Lock()
			delete(cc.pending, id)
			cc.dropRoleLocked()
			cc.mu.Unlock()
			return r
		case err == nil:
			cc.deliver(fid, r)
			continue
		case !isTimeout(err):
			cc.fail(fmt.Errorf("%w: %s: %w", ErrConnLost, cc.addr, err))
			return <-cl.ch // fail handed every waiting call its error
		}
		// A deadline interrupted the read: the call's own, ctx's end,
		// or a stale interruption meant for an earlier holder of the role.
		var out error
		switch {
		case ctx.Err() != nil:
			out = ctxError(req, cc.addr, ctx.Err())
		case !deadline.IsZero() && !time.Now().Before(deadline):
			if req.Timeout > 0 && int64(req.Timeout) <= timeout {
				out = timeoutError(req, cc.addr)
			} else {
				out = ctxError(req, cc.addr, context.DeadlineExceeded)
			}
		default:
			setDeadline()
			continue
		}
		return cc.giveUp(cl, id, out)
	}
}

// giveUp ends a leading call that stopped waiting with out: the call is
// left pending as abandoned (its late answer is still read off the
// connection) and the reader role is given up, unless the connection
// failed meanwhile, whose error the call then returns.
func (cc *clientConn) giveUp(cl *call, id uint64, out error) result {
	_ = cc.conn.SetReadDeadline(time.Time{})
	cc.mu.Lock()
	_, mine := cc.pending[id]
	if mine {
		cc.pending[id] = nil // abandoned: see abandon
	}
	if cc.err == nil {
		cc.dropRoleLocked()
	}
	cc.mu.Unlock()
	if !mine {
		return <-cl.ch // fail got there first
	}
	return result{err: out}
}

// interruptRead makes the role holder's blocked read return a timeout.
func (cc *clientConn) interruptRead() {
	_ = cc.conn.SetReadDeadline(time.Unix(1, 0))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readResponse reads the next response. An error means the connection is
// unusable, except a timeout, after which reading may go on.
func (cc *clientConn) readResponse() (uint64, result, error) {
	body, bigID, big, err := cc.fr.next()
	if err != nil {
		return 0, result{}, err
	}
	if big {
		return bigID, result{err: fmt.Errorf(
			"%w: response frame exceeds the limit of %d bytes", ErrFrameTooLarge, cc.client.maxFrame)}, nil
	}
	var r result
	if err := decodeResponse(body, &r.resp); err != nil {
		return 0, result{}, fmt.Errorf("malformed response: %w", err)
	}
	return r.resp.CallID, r, nil
}

// readLoop holds the reader role for callers that wait while none of them
// reads, until no call waits or the connection fails.
func (cc *clientConn) readLoop() {
	defer cc.client.wg.Done()
	_ = cc.conn.SetReadDeadline(time.Time{})
	for {
		id, r, err := cc.readResponse()
		if err != nil {
			if isTimeout(err) { // a stale interruption meant for a caller
				_ = cc.conn.SetReadDeadline(time.Time{})
				continue
			}
			cc.fail(fmt.Errorf("%w: %s: %w", ErrConnLost, cc.addr, err))
			return
		}
		cc.mu.Lock()
		cl := cc.pending[id]
		delete(cc.pending, id)
		idle := len(cc.pending) == 0
		if idle {
			cc.reading = false
			cc.idleSince = time.Now()
		}
		cc.mu.Unlock()
		if cl != nil {
			cl.ch <- r
		}
		if idle {
			return
		}
	}
}
