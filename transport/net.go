// This file holds Net, the Transport that talks over the real network:
// memberlist's UDP+TCP gossip transport plus a TCP listener for calls.

package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// bindRetries is how many times NewNet tries to bind gossip when the port is
// chosen by the kernel: the free TCP port it gets may already be taken for
// UDP by someone else.
const bindRetries = 10

// NetConfig configures NewNet.
type NetConfig struct {
	// BindAddr is the "host:port" gossip listens on, for both UDP packets
	// and TCP streams. Port 0 picks a free port; GossipAddr reports it. An
	// empty host listens on every interface.
	BindAddr string

	// CallBindAddr is the "host:port" the call listener listens on. Empty
	// means the host of BindAddr with a free port; CallAddr reports it.
	CallBindAddr string

	// AdvertiseAddr, if set, is the "ip:port" announced to other nodes for
	// gossip, for example when the node sits behind NAT. It is only used
	// when memberlist's own Config.AdvertiseAddr is empty.
	AdvertiseAddr string

	// AdvertiseCallAddr, if set, is the "ip:port" other nodes dial for
	// calls (CallAddr), when it differs from the bound one (NAT, port
	// mapping). Empty: the bound call address, with a bind-all host
	// replaced by the advertised gossip IP (AdvertiseAddr's, or a private
	// IP of this machine).
	AdvertiseCallAddr string

	// Logger receives memberlist's transport messages. Nil discards them.
	Logger *log.Logger
}

// Net is the Transport for the real network. Create it with NewNet; it is
// safe for concurrent use.
type Net struct {
	gossip     *gossipSockets
	gossipAddr string
	advIP      net.IP // nil unless NetConfig.AdvertiseAddr was set
	advPort    int

	calls    *netCallListener
	callAddr string // advertised call address

	streamCh chan net.Conn // gossip streams, forwarded from gossip
	conns    connSet       // every stream this Net dialed or accepted

	ctx    context.Context // ends on Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup // the stream forwarder

	shutdownOnce sync.Once
}

var _ Transport = (*Net)(nil)

// NewNet binds the gossip port (UDP and TCP) and the call port and returns a
// ready Transport. Hand it to memberlist through Config.Transport; memberlist
// calls Shutdown when it stops.
func NewNet(cfg NetConfig) (*Net, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}

	bindHost, bindIP, bindPort, err := parseBindAddr(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("transport: invalid BindAddr %q: %w", cfg.BindAddr, err)
	}
	callBind := cfg.CallBindAddr
	if callBind == "" {
		callBind = net.JoinHostPort(bindHost, "0")
	}
	var advIP net.IP
	var advPort int
	if cfg.AdvertiseAddr != "" {
		advIP, advPort, err = parseAdvertiseAddr(cfg.AdvertiseAddr)
		if err != nil {
			return nil, fmt.Errorf("transport: invalid AdvertiseAddr %q: %w", cfg.AdvertiseAddr, err)
		}
	}

	gossip, err := bindGossip(bindIP, bindPort, logger)
	if err != nil {
		return nil, fmt.Errorf("transport: bind gossip to %q: %w", cfg.BindAddr, err)
	}
	ln, err := net.Listen("tcp", callBind)
	if err != nil {
		_ = gossip.shutdown()
		return nil, fmt.Errorf("transport: listen for calls on %q: %w", callBind, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	n := &Net{
		gossip:     gossip,
		gossipAddr: gossip.addr(),
		advIP:      advIP,
		advPort:    advPort,
		streamCh:   make(chan net.Conn),
		ctx:        ctx,
		cancel:     cancel,
	}
	n.calls = &netCallListener{Listener: ln, n: n}
	if n.callAddr, err = n.advertisedCallAddr(cfg.AdvertiseCallAddr); err != nil {
		_ = ln.Close()
		_ = gossip.shutdown()
		cancel()
		return nil, err
	}
	n.wg.Add(1)
	go n.forwardStreams()
	return n, nil
}

// parseBindAddr splits a bind "host:port" into the host as written, the IP
// memberlist should bind (hostnames are resolved; empty means all
// interfaces) and the port.
func parseBindAddr(addr string) (host, ip string, port int, err error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", 0, err
	}
	port, err = net.LookupPort("tcp", portStr)
	if err != nil {
		return "", "", 0, err
	}
	switch {
	case host == "":
		ip = "0.0.0.0"
	case net.ParseIP(host) != nil:
		ip = host
	default:
		resolved, err := net.ResolveIPAddr("ip", host)
		if err != nil {
			return "", "", 0, err
		}
		ip = resolved.IP.String()
	}
	return host, ip, port, nil
}

// parseAdvertiseAddr parses an "ip:port" advertise address.
func parseAdvertiseAddr(addr string) (net.IP, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, 0, err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, 0, fmt.Errorf("host %q is not an IP address", host)
	}
	if ip4 := ip.To4(); ip4 != nil {
		ip = ip4
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return nil, 0, fmt.Errorf("port %q is not in 1..65535", portStr)
	}
	return ip, port, nil
}

// bindGossip binds the gossip port. With port 0 the kernel picks the TCP
// port and the same number is then bound for UDP, which can collide with
// another socket, so that case is retried.
func bindGossip(ip string, port int, logger *log.Logger) (*gossipSockets, error) {
	var err error
	for attempt := 0; attempt < bindRetries; attempt++ {
		var gossip *gossipSockets
		gossip, err = listenGossip(ip, port, logger)
		if err == nil {
			return gossip, nil
		}
		if port != 0 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

// forwardStreams moves incoming gossip streams from memberlist's transport
// to streamCh, recording each so Shutdown can close it.
func (n *Net) forwardStreams() {
	defer n.wg.Done()
	in := n.gossip.streamCh
	for {
		select {
		case c := <-in:
			if !n.conns.add(c) {
				_ = c.Close()
				continue
			}
			select {
			case n.streamCh <- c:
			case <-n.ctx.Done():
				_ = c.Close()
				return
			}
		case <-n.ctx.Done():
			return
		}
	}
}

// GossipAddr returns the "ip:port" gossip is bound to, with the port the
// kernel picked when BindAddr asked for port 0. When bound to a specific IP
// this is what other nodes pass to memberlist's Join; when bound to all
// interfaces ("0.0.0.0") use a reachable IP of this machine with the port.
func (n *Net) GossipAddr() string { return n.gossipAddr }

// FinalAdvertiseAddr implements memberlist.Transport. memberlist's own
// advertise settings win; otherwise NetConfig.AdvertiseAddr is used, and
// failing that the bound address (a private IP when bound to all
// interfaces).
func (n *Net) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip == "" && n.advIP != nil {
		return n.advIP, n.advPort, nil
	}
	return n.gossip.finalAdvertiseAddr(ip, port)
}

// WriteTo implements memberlist.Transport: it sends one UDP packet.
func (n *Net) WriteTo(b []byte, addr string) (time.Time, error) {
	return n.gossip.writeTo(b, addr)
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (n *Net) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	return n.gossip.writeTo(b, addr.Addr)
}

// PacketCh implements memberlist.Transport: incoming UDP packets.
func (n *Net) PacketCh() <-chan *memberlist.Packet { return n.gossip.packetCh }

// StreamCh implements memberlist.Transport: incoming gossip TCP streams.
// The channel is never closed.
func (n *Net) StreamCh() <-chan net.Conn { return n.streamCh }

// DialTimeout implements memberlist.Transport: it opens a gossip TCP stream
// to addr. Errors are those of net.Dialer, as *net.OpError.
func (n *Net) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return n.dial(context.Background(), addr, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (n *Net) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return n.DialTimeout(addr.Addr, timeout)
}

// DialCall implements Transport. The stream is a *net.TCPConn with Nagle's
// algorithm off. Errors are those of net.Dialer, as *net.OpError: a peer
// that is not listening gives one matching syscall.ECONNREFUSED, an expired
// ctx one whose Timeout method reports true. After Shutdown it fails with an
// error matching net.ErrClosed.
func (n *Net) DialCall(ctx context.Context, addr string) (net.Conn, error) {
	return n.dial(ctx, addr, 0)
}

// dial opens a TCP stream that ends with ctx, timeout or Shutdown.
func (n *Net) dial(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	closedErr := &net.OpError{Op: "dial", Net: "tcp", Err: net.ErrClosed}
	if n.ctx.Err() != nil {
		return nil, closedErr
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(n.ctx, cancel)
	defer stop()

	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if n.ctx.Err() != nil {
			return nil, closedErr
		}
		return nil, err
	}
	if !n.conns.add(c) {
		_ = c.Close()
		return nil, closedErr
	}
	return c, nil
}

// CallListener implements Transport. Accept returns *net.TCPConn streams;
// after Shutdown it fails with an error matching net.ErrClosed.
func (n *Net) CallListener() net.Listener { return n.calls }

// CallAddr implements Transport: the "ip:port" other nodes dial for calls:
// NetConfig.AdvertiseCallAddr, or the bound call address with a bind-all
// host replaced by a routable IP.
func (n *Net) CallAddr() string { return n.callAddr }

// advertisedCallAddr returns the call address to advertise.
func (n *Net) advertisedCallAddr(advertise string) (string, error) {
	if advertise != "" {
		ip, port, err := parseAdvertiseAddr(advertise)
		if err != nil || port == 0 {
			return "", fmt.Errorf("transport: invalid AdvertiseCallAddr %q: want ip:port with a non-zero port", advertise)
		}
		return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
	}
	bound := n.calls.Addr().(*net.TCPAddr)
	if !bound.IP.IsUnspecified() {
		return bound.String(), nil
	}
	ip, _, err := n.FinalAdvertiseAddr("", 0)
	if err != nil {
		return "", fmt.Errorf("transport: calls bound to all interfaces and no address to advertise (set AdvertiseCallAddr or AdvertiseAddr): %w", err)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(bound.Port)), nil
}

// Shutdown implements memberlist.Transport. It closes the gossip sockets, the
// call listener and every stream this Net dialed or accepted (their peers
// see the connection end), and ends pending dials. Calling it again does
// nothing and returns nil.
func (n *Net) Shutdown() error {
	var err error // set only for the first caller
	n.shutdownOnce.Do(func() {
		n.cancel()
		err = n.calls.Listener.Close()
		if errors.Is(err, net.ErrClosed) {
			err = nil // already closed by the user
		}
		n.wg.Wait()
		if gerr := n.gossip.shutdown(); gerr != nil && err == nil {
			err = gerr
		}
		n.conns.closeAll()
		if err != nil {
			err = fmt.Errorf("transport: shutdown: %w", err)
		}
	})
	return err
}

// netCallListener is Net's call listener: it records accepted streams so
// Shutdown can close them.
type netCallListener struct {
	net.Listener
	n *Net
}

// Accept waits for the next call stream.
func (l *netCallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if !l.n.conns.add(c) {
		_ = c.Close()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	return c, nil
}
