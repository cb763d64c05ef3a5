//go:build linux

// This file holds the delay helper, for kernels without netem: this test
// binary, started in the hub namespace, forwards Ethernet frames between
// two interfaces through AF_PACKET sockets, holding those in one direction
// for a fixed time. The sockets carry a virtio-net header with each frame
// (PACKET_VNET_HDR), so segmentation offload and checksum state pass
// through unchanged and frames larger than the MTU need no special care.

package netns

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Environment of the delay helper: frames read on delayFromEnv's interface
// are written to delayToEnv's after delayEnv; frames the other way are
// forwarded at once.
const (
	delayFromEnv = "AEGIS_NETNS_DELAY_FROM"
	delayToEnv   = "AEGIS_NETNS_DELAY_TO"
	delayEnv     = "AEGIS_NETNS_DELAY"
)

// Socket options of AF_PACKET not in package syscall.
const (
	packetVnetHdr        = 15
	packetIgnoreOutgoing = 23
)

// delayQueue bounds the frames held in one direction; beyond it frames are
// dropped, as a full netem queue would drop them.
const delayQueue = 1 << 14

// runDelayer is the delay helper's main: it prints "ready" once both
// sockets are bound and forwards until SIGTERM or SIGINT.
func runDelayer() int {
	delay, err := time.ParseDuration(os.Getenv(delayEnv))
	if err != nil {
		fmt.Fprintf(os.Stderr, "delay: %s: %v\n", delayEnv, err)
		return 2
	}
	from, err := openPacket(os.Getenv(delayFromEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "delay:", err)
		return 1
	}
	to, err := openPacket(os.Getenv(delayToEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "delay:", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go forward(from, to, delay)
	go forward(to, from, 0)
	fmt.Println("ready")
	<-sigs
	return 0
}

// openPacket returns an AF_PACKET socket bound to interface name that
// reads and writes frames with a virtio-net header and does not see the
// frames sent through it.
func openPacket(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return -1, err
	}
	// Protocol 0 until bound, so that no frame of another interface is read.
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	for _, o := range []struct{ level, opt, v int }{
		{syscall.SOL_PACKET, packetVnetHdr, 1},
		{syscall.SOL_PACKET, packetIgnoreOutgoing, 1},
		{syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 8 << 20},
		{syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, 8 << 20},
	} {
		if err := syscall.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return -1, fmt.Errorf("setsockopt %d/%d on %s: %w", o.level, o.opt, name, err)
		}
	}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return -1, fmt.Errorf("bind to %s: %w", name, err)
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// heldFrame is a frame (with its virtio-net header) and when to send it.
type heldFrame struct {
	due time.Time
	b   []byte
}

// forward reads frames from src and writes each to dst delay after it was
// read, in order. It returns when src fails.
func forward(src, dst int, delay time.Duration) {
	q := make(chan heldFrame, delayQueue)
	go func() {
		for f := range q {
			if d := time.Until(f.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := syscall.Write(dst, f.b); err != nil {
				fmt.Fprintln(os.Stderr, "delay: write:", err)
			}
		}
	}()
	defer close(q)
	buf := make([]byte, 1<<17) // a virtio-net header and a 64 KiB GSO frame
	for {
		n, from, err := syscall.Recvfrom(src, buf, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "delay: read:", err)
			return
		}
		if ll, ok := from.(*syscall.SockaddrLinklayer); ok && ll.Pkttype == syscall.PACKET_OUTGOING {
			continue
		}
		select {
		case q <- heldFrame{due: time.Now().Add(delay), b: append([]byte(nil), buf[:n]...)}:
		default:
		}
	}
}
