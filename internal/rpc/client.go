// This file implements the calling side: a Client keeps one multiplexed
// connection per peer address, sends requests through the batching writer and
// hands responses from a per-connection reader goroutine to waiting callers.

package rpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
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
}

// Client calls peers. It keeps one connection per peer address, shared by
// all concurrent calls to that peer. It is safe for concurrent use.
type Client struct {
	maxFrame int
	dial     func(ctx context.Context, addr string) (net.Conn, error)
	ctx      context.Context // ends on Close; bounds dials
	cancel   context.CancelFunc

	mu     sync.RWMutex
	conns  map[string]*clientConn
	closed bool

	wg sync.WaitGroup // dialers and readers
}

// NewClient returns a Client with the given options.
func NewClient(opts ClientOptions) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		maxFrame: normMaxFrame(opts.MaxFrameSize),
		dial:     opts.Dial,
		ctx:      ctx,
		cancel:   cancel,
		conns:    make(map[string]*clientConn),
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
	resp *Response
	err  error
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan result, 1)} }}

// clientConn is the connection to one peer address.
type clientConn struct {
	client *Client
	addr   string

	ready   chan struct{} // closed once the dial finished
	dialErr error         // set before ready is closed; nil if conn is usable
	conn    net.Conn      // set under client.mu before ready is closed

	w frameWriter

	mu      sync.Mutex
	pending map[uint64]*call
	nextID  uint64
	err     error // set once the connection is dead; nothing registers after
}

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
func (c *Client) Call(ctx context.Context, addr string, req *Request) (*Response, error) {
	if req == nil {
		return nil, errNilRequest
	}
	var timeout int64
	if req.Timeout > 0 {
		timeout = int64(req.Timeout)
	}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return nil, ctxError(req, addr, context.DeadlineExceeded)
		}
		if timeout == 0 || int64(left) < timeout {
			timeout = int64(left)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, ctxError(req, addr, err)
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
		return nil, frameTooLarge(sizeNoID+1, c.maxFrame)
	}

	cl := callPool.Get().(*call)
	var (
		cc   *clientConn
		id   uint64
		busy bool // other calls are in flight on cc
		err  error
	)
	for tries := 0; ; tries++ {
		cc, err = c.conn(ctx, expired, addr, req)
		if err != nil {
			callPool.Put(cl)
			return nil, err
		}
		if id, busy, err = cc.register(cl); err == nil {
			break
		}
		// The connection died before anything of this call was written to
		// it: forget it and dial again.
		c.forget(cc)
		if tries == maxRedials {
			callPool.Put(cl)
			if errors.Is(err, ErrClosed) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %s: connection failed before the request was sent: %v", ErrDial, addr, err)
		}
	}
	if n := sizeNoID + uintSize(id); n > c.maxFrame {
		cc.unregister(id)
		callPool.Put(cl)
		return nil, frameTooLarge(n, c.maxFrame)
	}
	if cc.w.lock() == nil {
		cc.w.buf = appendRequestFrame(cc.w.buf, req, id, timeout)
		_ = cc.w.commit(busy)
	}
	// Whoever's write fails (this goroutine's or a batch writer's) fails the
	// connection, which hands ErrConnLost to every registered call; so the
	// outcome always arrives on cl.ch.
	select {
	case r := <-cl.ch:
		callPool.Put(cl)
		return r.resp, r.err
	case <-ctx.Done():
		if cc.unregister(id) {
			callPool.Put(cl)
		} // else the reader holds cl and will send to it: leave it to the GC
		return nil, ctxError(req, addr, ctx.Err())
	case <-expired:
		if cc.unregister(id) {
			callPool.Put(cl)
		}
		return nil, timeoutError(req, addr)
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
	return cc, nil
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
		c.wg.Add(1)
		go cc.readLoop()
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

// unregister removes call id from the pending calls. It reports false if the
// call was no longer there (its result is being delivered).
func (cc *clientConn) unregister(id uint64) bool {
	cc.mu.Lock()
	_, ok := cc.pending[id]
	if ok {
		delete(cc.pending, id)
	}
	cc.mu.Unlock()
	return ok
}

// deliver hands r to the caller waiting for call id, if it still waits. It
// reports whether no call is left waiting.
func (cc *clientConn) deliver(id uint64, r result) (idle bool) {
	cc.mu.Lock()
	cl := cc.pending[id]
	if cl != nil {
		delete(cc.pending, id)
	}
	idle = len(cc.pending) == 0
	cc.mu.Unlock()
	if cl != nil {
		cl.ch <- r // capacity 1, and only one sender per registration
	}
	return idle
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

	cc.w.shutdown(err)
	_ = cc.conn.Close()
	for _, cl := range pending {
		cl.ch <- result{err: err}
	}
	cc.client.forget(cc)
}

func (cc *clientConn) writeFailed(err error) {
	cc.fail(fmt.Errorf("%w: %s: write: %w", ErrConnLost, cc.addr, err))
}

// readLoop reads responses and hands them to their callers until the
// connection fails.
func (cc *clientConn) readLoop() {
	defer cc.client.wg.Done()
	fr := newFrameReader(cc.conn, cc.client.maxFrame, KindResponse)
	for {
		body, bigID, big, err := fr.next()
		if err != nil {
			cc.fail(fmt.Errorf("%w: %s: read: %w", ErrConnLost, cc.addr, err))
			return
		}
		if big {
			cc.deliver(bigID, result{err: fmt.Errorf(
				"%w: response frame exceeds the limit of %d bytes", ErrFrameTooLarge, cc.client.maxFrame)})
			continue
		}
		resp := new(Response)
		if err := decodeResponse(body, resp); err != nil {
			cc.fail(fmt.Errorf("%w: %s: malformed response: %w", ErrConnLost, cc.addr, err))
			return
		}
		if idle := cc.deliver(resp.CallID, result{resp: resp}); idle && fr.br.Buffered() == 0 {
			// Nothing else to read or wait for: let the caller just woken
			// run on this P now, instead of first going through a read
			// that would find no data (a syscall) and maybe having the
			// caller stolen by another, idle, thread. This measurably
			// cuts single-caller latency.
			runtime.Gosched()
		}
	}
}
