package transport

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
)

// gossipSockets is the gossip port: a UDP socket for packets and a TCP
// listener for streams on the same port number. It does the job of
// memberlist's NetTransport, which allocates and clears a 64 KiB buffer
// for every packet it receives (most of the CPU a node spends on a
// heartbeat, measured); this one reads into one buffer and copies each
// packet out at its own size, and sends to an address parsed without
// allocating.
type gossipSockets struct {
	tcp      *net.TCPListener
	udp      *net.UDPConn
	bindIP   string
	port     int
	logger   *log.Logger
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	done     chan struct{}
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// udpReadBuffer is the UDP receive buffer asked of the kernel (halved
// until it is granted), as memberlist's transport does.
const udpReadBuffer = 2 * 1024 * 1024

// maxPacket is the largest UDP payload read.
const maxPacket = 65536

// listenGossip binds TCP and then UDP on the same port of ip (with port
// 0, the port the kernel gives TCP) and starts reading them.
func listenGossip(ip string, port int, logger *log.Logger) (*gossipSockets, error) {
	addr := net.ParseIP(ip)
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: addr, Port: port})
	if err != nil {
		return nil, fmt.Errorf("listen TCP: %w", err)
	}
	port = tcp.Addr().(*net.TCPAddr).Port
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: addr, Port: port})
	if err != nil {
		_ = tcp.Close()
		return nil, fmt.Errorf("listen UDP: %w", err)
	}
	for size := udpReadBuffer; size > 0; size /= 2 {
		if udp.SetReadBuffer(size) == nil {
			break
		}
	}
	s := &gossipSockets{
		tcp: tcp, udp: udp, bindIP: ip, port: port, logger: logger,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
	}
	s.wg.Add(2)
	go s.readPackets()
	go s.acceptStreams()
	return s, nil
}

// readPackets hands every UDP packet to packetCh, copied out of one read
// buffer, until shutdown.
func (s *gossipSockets) readPackets() {
	defer s.wg.Done()
	buf := make([]byte, maxPacket)
	for {
		n, from, err := s.udp.ReadFromUDPAddrPort(buf)
		ts := time.Now()
		if err != nil {
			if s.stopped() {
				return
			}
			s.logger.Printf("[ERR] aegis: reading a UDP packet: %v", err)
			continue
		}
		if n < 1 {
			continue
		}
		p := &memberlist.Packet{Buf: append([]byte(nil), buf[:n]...), From: net.UDPAddrFromAddrPort(from), Timestamp: ts}
		select {
		case s.packetCh <- p:
		case <-s.done:
			return
		}
	}
}

// acceptStreams hands every accepted TCP stream to streamCh until
// shutdown, backing off after errors.
func (s *gossipSockets) acceptStreams() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.tcp.AcceptTCP()
		if err != nil {
			if s.stopped() {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logger.Printf("[ERR] aegis: accepting a gossip stream: %v", err)
			select {
			case <-time.After(delay):
			case <-s.done:
				return
			}
			continue
		}
		delay = 0
		select {
		case s.streamCh <- c:
		case <-s.done:
			_ = c.Close()
			return
		}
	}
}

func (s *gossipSockets) stopped() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// writeTo sends b as one UDP packet to addr ("ip:port"; a host name is
// resolved).
func (s *gossipSockets) writeTo(b []byte, addr string) (time.Time, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		ua, rerr := net.ResolveUDPAddr("udp", addr)
		if rerr != nil {
			return time.Time{}, rerr
		}
		ap = ua.AddrPort()
	}
	_, err = s.udp.WriteToUDPAddrPort(b, ap)
	return time.Now(), err
}

// finalAdvertiseAddr is memberlist's choice of the address to announce:
// the one given; else, when bound to every interface, a private IP of
// this machine; else the bound IP; with the bound port unless one is
// given.
func (s *gossipSockets) finalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip != "" {
		adv := net.ParseIP(ip)
		if adv == nil {
			return nil, 0, fmt.Errorf("transport: advertise address %q is not an IP", ip)
		}
		if v4 := adv.To4(); v4 != nil {
			adv = v4
		}
		return adv, port, nil
	}
	if bound := net.ParseIP(s.bindIP); bound != nil && !bound.IsUnspecified() {
		return s.tcp.Addr().(*net.TCPAddr).IP, s.port, nil
	}
	priv, err := sockaddr.GetPrivateIP()
	if err != nil {
		return nil, 0, fmt.Errorf("transport: reading interface addresses: %w", err)
	}
	if priv == "" {
		return nil, 0, errors.New("transport: no private IP address found to advertise; set an advertise address")
	}
	adv := net.ParseIP(priv)
	if adv == nil {
		return nil, 0, fmt.Errorf("transport: private IP %q does not parse", priv)
	}
	return adv, s.port, nil
}

// addr is the bound "ip:port".
func (s *gossipSockets) addr() string { return net.JoinHostPort(s.bindIP, strconv.Itoa(s.port)) }

// shutdown closes both sockets and waits for the readers to stop.
func (s *gossipSockets) shutdown() error {
	var err error
	s.stopOnce.Do(func() {
		close(s.done)
		err = errors.Join(s.tcp.Close(), s.udp.Close())
		s.wg.Wait()
	})
	return err
}
