// This file holds the package documentation, protocol constants, errors and the Request and Response.

// Package rpc implements the direct-call protocol between Aegis nodes: a
// caller sends a Request to a peer's call listener over a stream connection
// (TCP in production, an in-memory conn in tests), the peer runs a Handler and
// answers with a Response.
//
// # Wire format
//
// Every message is one frame:
//
//	length uint32 (big-endian, bytes that follow) | version (1) | kind (1 request, 2 response) | body
//
// The body is a msgpack array, written and read by the small hand-rolled codec
// in this package (no reflection):
//
//	request:  [callID uint, service str, method str, instanceID str, messageID str,
//	           timeoutNanos int (0 = none), header map str->str (or nil), payload bin, attempt uint]
//	response: [callID uint, status uint (0 ok, 1 error), payload bin, errCode str, errMessage str, retryable bool]
//
// Decoders accept trailing array elements they do not know (for later
// versions) and every msgpack width of the types above.
//
// # Connections
//
// A Client keeps one connection per peer address and multiplexes all
// concurrent calls on it by call ID. A caller that finds nobody reading the
// connection reads its own response, handing others theirs on the way.
//
// A Server reads each connection in a reader role that passes between
// goroutines. The reader runs the handler of the request it decoded itself,
// so a fast handler costs no goroutine switch, and reads on once it returns;
// whole requests that arrived together are run one after another and
// answered in one write while handlers are fast. The role passes to another
// goroutine (a parked spare or a new one) when more requests are waiting and
// handlers have been slow, when a handler is found still running at a
// monitor's look (every millisecond), and before every handler while
// handlers take a millisecond or more: slow handlers then run side by side
// while the connection is read on. A handler found still running counts
// as slow at once, so a burst of slow calls on a connection whose handlers
// were fast starts together, not one per look.
//
// Writers on both sides batch frames: the goroutine that finds the
// connection idle writes everything queued so far in one syscall, others only
// append their frame and go on waiting.
//
// # Limits
//
// A Server bounds what a peer can make it hold (see ServerOptions): frames
// are buffered as their bytes arrive, never by their announced length, up to
// MaxFrameSize; a frame must arrive whole within FrameTimeout and an idle
// connection is closed after IdleTimeout; connections are capped in total and
// per remote IP; a connection with MaxInflightPerConn requests in flight is
// not read until one is answered, and answers its peer does not read hold up
// its handlers. Server.Stats counts every limit reached.
package rpc

import (
	"errors"
	"fmt"
	"time"
)

// DefaultMaxFrameSize is the frame size limit used when ClientOptions or
// ServerOptions leave MaxFrameSize zero: 4 MiB.
const DefaultMaxFrameSize = 4 << 20

// Protocol constants.
const (
	// Version is the protocol version byte this build writes and accepts.
	Version byte = 1
	// KindRequest marks a request frame.
	KindRequest byte = 1
	// KindResponse marks a response frame.
	KindResponse byte = 2
)

// Error codes a Server puts in ErrorInfo.Code on its own behalf.
const (
	// CodeFrameTooLarge: the request frame exceeded the server's MaxFrameSize;
	// the handler did not run.
	CodeFrameTooLarge = "frame-too-large"
	// CodeResponseTooLarge: the handler's response would exceed the server's
	// MaxFrameSize; it was dropped.
	CodeResponseTooLarge = "response-too-large"
	// CodePanic: the handler panicked; Message holds the panic value.
	CodePanic = "panic"
)

// Sentinel errors returned by Client.Call (wrapped with detail; match them
// with errors.Is).
var (
	// ErrFrameTooLarge: the request frame would exceed the client's
	// MaxFrameSize (nothing was sent), or the response frame exceeded it (it
	// was discarded).
	ErrFrameTooLarge = errors.New("rpc: frame too large")
	// ErrConnLost: the connection broke after the request may have been
	// written; the request MAY have been delivered and handled.
	ErrConnLost = errors.New("rpc: connection lost")
	// ErrDial: no connection to the peer could be opened; the request was
	// certainly not delivered.
	ErrDial = errors.New("rpc: dial failed")
	// ErrClosed: the Client was closed (before or during the call).
	ErrClosed = errors.New("rpc: client closed")
	// ErrTimeout: Request.Timeout passed before the response arrived. The
	// request may have been delivered unless the error also matches
	// ErrDial.
	ErrTimeout = errors.New("rpc: call timed out")
)

// Request is one call as the caller builds it and the handler receives it.
type Request struct {
	// CallID identifies the call on its connection. The Client assigns it;
	// any value set by the caller is ignored.
	CallID uint64
	// Service, Method, InstanceID and MessageID address and label the call.
	Service    string
	Method     string
	InstanceID string
	MessageID  string
	// MessageSeq, when non-zero, is sent appended to MessageID in base 36,
	// so that a caller numbering its messages does not build (and allocate)
	// the ID string on every call. The receiver sees the whole ID in
	// MessageID and MessageSeq 0.
	MessageSeq uint64
	// Timeout, if positive, bounds the call: Client.Call gives up with
	// ErrTimeout once it has passed (without a context of its own, which
	// would cost allocations on every call), and sends the smaller of it and
	// the time left before ctx's deadline as the handler's limit. The
	// handler sees the value that was sent (0 = no limit).
	Timeout time.Duration
	// Header carries string metadata; nil and empty travel the same way and
	// arrive as nil.
	Header map[string]string
	// Payload is the opaque call body. An empty payload arrives as nil.
	Payload []byte
	// Attempt counts retries of the same logical call (0 = first try).
	Attempt uint32
	// Epoch is the role group's epoch of the active instance the call was
	// routed to (0 outside role groups).
	Epoch uint64
}

// Response is the answer to one call.
type Response struct {
	// CallID is the ID of the call answered. The Server sets it; handlers
	// need not.
	CallID uint64
	// Payload is the result body (empty arrives as nil).
	Payload []byte
	// Err is nil on success; otherwise it describes the failure.
	Err *ErrorInfo
}

// ErrorInfo is an error reported by the peer.
type ErrorInfo struct {
	// Code is a short machine-readable error kind, e.g. CodePanic.
	Code string
	// Message is human-readable detail.
	Message string
	// Retryable says whether the caller may try the call again.
	Retryable bool
}

// Error makes ErrorInfo usable as an error.
func (e *ErrorInfo) Error() string {
	if e.Message == "" {
		return "rpc: remote error " + e.Code
	}
	return fmt.Sprintf("rpc: remote error %s: %s", e.Code, e.Message)
}

// MinMaxFrameSize is the smallest effective frame size limit: a smaller
// positive MaxFrameSize is raised to it, so error responses always fit.
const MinMaxFrameSize = 256

// normMaxFrame turns an options value into an effective frame limit.
func normMaxFrame(n int) int {
	if n <= 0 {
		return DefaultMaxFrameSize
	}
	if n < MinMaxFrameSize {
		return MinMaxFrameSize
	}
	if uint64(n) > maxWireFrame {
		return int(maxWireFrame)
	}
	return n
}

// maxWireFrame is the largest length a 4-byte prefix can carry (a variable so
// the int conversion above compiles on 32-bit platforms too, where it is
// never reached).
var maxWireFrame uint64 = 1<<32 - 1
