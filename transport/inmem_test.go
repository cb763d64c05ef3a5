// This file tests what only the in-memory Network does: partitions, loss,
// latency, buffers, address handling and stream end semantics.

package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// memNodes creates n transports on nw at 127.0.0.1, 127.0.0.2, ... port 7946.
func memNodes(t *testing.T, nw *Network, n int) []*MemTransport {
	t.Helper()
	out := make([]*MemTransport, n)
	for i := range out {
		out[i] = nw.NewMemTransport(fmt.Sprintf("127.0.0.%d:7946", i+1))
		t.Cleanup(func() { _ = out[i].Shutdown() })
	}
	return out
}

// send writes one packet; with no latency configured delivery is
// synchronous, so the caller can check the receiver's channel at once.
func send(t *testing.T, from, to *MemTransport, msg string) {
	t.Helper()
	_, err := from.WriteTo([]byte(msg), to.GossipAddr())
	require.NoError(t, err)
}

func drain(tr *MemTransport) int {
	n := 0
	for {
		select {
		case <-tr.PacketCh():
			n++
		default:
			return n
		}
	}
}

// requireDialTimesOut checks that a dial from->to blocks for about d and
// then fails with a timeout, for a gossip stream and for a call.
func requireDialTimesOut(t *testing.T, from, to *MemTransport, d time.Duration) {
	t.Helper()
	start := time.Now()
	_, err := from.DialTimeout(to.GossipAddr(), d)
	require.GreaterOrEqual(t, time.Since(start), d)
	requireTimeout(t, err)

	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err = from.DialCall(ctx, to.CallAddr())
	require.GreaterOrEqual(t, time.Since(start), d)
	requireTimeout(t, err)
}

// requireTimeout checks a dial's timeout: a timeout that also matches
// context.DeadlineExceeded.
func requireTimeout(t *testing.T, err error) {
	t.Helper()
	requireOSTimeout(t, err)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestMemAddresses(t *testing.T) {
	nw := NewNetwork()
	tr := nw.NewMemTransport("127.0.0.11:7946")
	defer tr.Shutdown()
	require.Equal(t, "127.0.0.11:7946", tr.GossipAddr())
	require.Equal(t, "127.0.0.11:7947", tr.CallAddr())
	ip, port, err := tr.FinalAdvertiseAddr("10.0.0.1", 1)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.11", ip.String())
	require.Equal(t, 7946, port)

	// Gossip and call addresses are separate namespaces: the next port is
	// free for another node's gossip.
	next := nw.NewMemTransport("127.0.0.11:7947")
	defer next.Shutdown()

	v6 := nw.NewMemTransport("[::1]:7946")
	defer v6.Shutdown()
	require.Equal(t, "[::1]:7947", v6.CallAddr())
	c, err := tr.DialCall(context.Background(), "[::1]:7947")
	require.NoError(t, err)
	c.Close()

	for _, bad := range []string{"", "localhost:7946", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65535", "127.0.0.1:x"} {
		require.Panics(t, func() { nw.NewTransport(bad) }, bad)
	}
	require.PanicsWithValue(t, `transport: NewTransport("127.0.0.11:7946"): address already in use`,
		func() { nw.NewTransport("127.0.0.11:7946") })
	require.Panics(t, func() { nw.Partition([]string{"nope"}, nil) })
	require.Panics(t, func() { nw.SetLoss("nope", "*", 1) })

	_, err = tr.WriteTo([]byte("x"), "not an address")
	require.Error(t, err)
	_, err = tr.DialTimeout("not an address", time.Second)
	require.Error(t, err)
}

func TestMemPartition(t *testing.T) {
	nw := NewNetwork()
	nodes := memNodes(t, nw, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	established, server := dialCall(t, a, b)

	nw.Partition([]string{a.GossipAddr()}, []string{b.GossipAddr()})

	// Packets are dropped both ways, but a and b still reach c.
	send(t, a, b, "lost")
	send(t, b, a, "lost")
	require.Zero(t, drain(a)+drain(b))
	send(t, a, c, "ok")
	send(t, b, c, "ok")
	require.Equal(t, 2, drain(c))

	// Dials time out both ways; dials to c work.
	const d = 100 * time.Millisecond
	requireDialTimesOut(t, a, b, d)
	requireDialTimesOut(t, b, a, d)
	dialCall(t, a, c)

	// The established stream is blackholed: writes succeed, nothing
	// arrives.
	_, err := established.Write([]byte("lost"))
	require.NoError(t, err)
	_, err = server.Write([]byte("lost"))
	require.NoError(t, err)
	for _, r := range []net.Conn{established, server} {
		require.NoError(t, r.SetReadDeadline(time.Now().Add(d)))
		_, err = r.Read(make([]byte, 8))
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	}

	// Heal restores everything; bytes sent during the partition stay lost.
	nw.Heal()
	sendRecv(t, established, server, "after")
	sendRecv(t, server, established, "after")
	send(t, a, b, "ok")
	send(t, b, a, "ok")
	require.Equal(t, 2, drain(a)+drain(b))
	dialCall(t, a, b)
	sendRecv(t, dialStream(t, b, a), recvStream(t, a), "ok")
}

func TestMemDialBlackholeEndsOnShutdown(t *testing.T) {
	nw := NewNetwork()
	nodes := memNodes(t, nw, 2)
	a, b := nodes[0], nodes[1]
	nw.Partition([]string{a.GossipAddr()}, []string{b.GossipAddr()})

	errs := make(chan error, 2)
	go func() {
		_, err := a.DialCall(context.Background(), b.CallAddr())
		errs <- err
	}()
	go func() {
		_, err := a.DialTimeout(b.GossipAddr(), 0)
		errs <- err
	}()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := a.DialCall(ctx, b.CallAddr())
	require.ErrorIs(t, err, context.Canceled)

	require.NoError(t, a.Shutdown())
	for range 2 {
		select {
		case err := <-errs:
			require.ErrorIs(t, err, net.ErrClosed)
		case <-time.After(wait):
			require.FailNow(t, "blackholed dial outlived Shutdown")
		}
	}
}

func TestMemLoss(t *testing.T) {
	nw := NewNetwork()
	nodes := memNodes(t, nw, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]

	nw.SetLoss(a.GossipAddr(), b.GossipAddr(), 1.0)
	for range 100 {
		send(t, a, b, "lost")
		send(t, b, a, "kept")
		send(t, a, c, "kept")
	}
	require.Zero(t, drain(b))
	require.Equal(t, 100, drain(a))
	require.Equal(t, 100, drain(c))
	// Dials along the lossy link are blackholed, the reverse works.
	start := time.Now()
	_, err := a.DialTimeout(b.GossipAddr(), 50*time.Millisecond)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)
	requireTimeout(t, err)
	dialCall(t, b, a)

	// Wildcards, and the most specific rule wins.
	nw.Heal()
	nw.SetLoss("*", b.GossipAddr(), 1)
	nw.SetLoss(c.GossipAddr(), b.GossipAddr(), 0)
	send(t, a, b, "lost")
	send(t, c, b, "kept")
	send(t, b, a, "kept")
	require.Equal(t, 1, drain(b))
	require.Equal(t, 1, drain(a))

	// A fractional probability drops about that share.
	nw.Heal()
	nw.SetLoss("", "", 0.5)
	const n = 2000
	for range n {
		send(t, a, b, "maybe")
	}
	got := drain(b)
	require.InDelta(t, n/2, got, n/5) // 9 standard deviations

	nw.Heal()
	send(t, a, b, "kept")
	require.Equal(t, 1, drain(b))
}

func TestMemLatency(t *testing.T) {
	nw := NewNetwork()
	nodes := memNodes(t, nw, 2)
	a, b := nodes[0], nodes[1]
	client, server := dialCall(t, a, b)

	const d = 100 * time.Millisecond
	nw.SetLatency(d)

	// Packets arrive after d, in order.
	start := time.Now()
	const n = 50
	for i := range n {
		_, err := a.WriteTo(binary.BigEndian.AppendUint32(nil, uint32(i)), b.GossipAddr())
		require.NoError(t, err)
	}
	for i := range n {
		p := recvPacket(t, b)
		require.Equal(t, uint32(i), binary.BigEndian.Uint32(p.Buf))
		require.GreaterOrEqual(t, p.Timestamp.Sub(start), d)
	}
	elapsed := time.Since(start)
	require.GreaterOrEqual(t, elapsed, d)
	require.Less(t, elapsed, d+wait)

	// Stream bytes too, in order.
	start = time.Now()
	for _, part := range []string{"one", "two", "three"} {
		_, err := client.Write([]byte(part))
		require.NoError(t, err)
	}
	require.NoError(t, server.SetReadDeadline(time.Now().Add(wait)))
	got := make([]byte, len("onetwothree"))
	_, err := io.ReadFull(server, got)
	require.NoError(t, err)
	require.Equal(t, "onetwothree", string(got))
	elapsed = time.Since(start)
	require.GreaterOrEqual(t, elapsed, d)
	require.Less(t, elapsed, d+wait)

	// A Close is seen after the bytes written before it.
	_, err = client.Write([]byte("last"))
	require.NoError(t, err)
	require.NoError(t, client.Close())
	rest, err := io.ReadAll(server)
	require.NoError(t, err)
	require.Equal(t, "last", string(rest))

	// Back to immediate delivery.
	nw.SetLatency(0)
	send(t, a, b, "now")
	require.Equal(t, 1, drain(b))
}

func TestMemConcurrentNewTransport(t *testing.T) {
	nw := NewNetwork()
	const n = 50
	trs := make([]*MemTransport, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { trs[i] = nw.NewMemTransport(fmt.Sprintf("127.0.1.%d:7946", i+1)) })
	}
	wg.Wait()
	defer func() {
		for _, tr := range trs {
			wg.Go(func() { assert.NoError(t, tr.Shutdown()) })
		}
		wg.Wait()
	}()
	for i, tr := range trs {
		next := trs[(i+1)%n]
		send(t, tr, next, "hi")
		require.Equal(t, 1, drain(next))
	}

	// Racing for one address: exactly one wins.
	var mu sync.Mutex
	var winners []*MemTransport
	panics := 0
	for range n {
		wg.Go(func() {
			defer func() {
				if recover() != nil {
					mu.Lock()
					panics++
					mu.Unlock()
				}
			}()
			tr := nw.NewMemTransport("127.0.2.1:7946")
			mu.Lock()
			winners = append(winners, tr)
			mu.Unlock()
		})
	}
	wg.Wait()
	require.Len(t, winners, 1)
	require.Equal(t, n-1, panics)
	require.NoError(t, winners[0].Shutdown())
}

func TestMemAddressReuse(t *testing.T) {
	nw := NewNetwork()
	a := nw.NewMemTransport("127.0.0.1:7946")
	defer a.Shutdown()
	b := nw.NewMemTransport("127.0.0.2:7946")
	client, _ := dialCall(t, a, b)

	require.NoError(t, b.Shutdown())
	_, err := client.Read(make([]byte, 1))
	require.ErrorIs(t, err, syscall.ECONNRESET)
	_, err = client.Write([]byte("x"))
	require.ErrorIs(t, err, syscall.ECONNRESET)

	// The restarted node takes the address over.
	b2 := nw.NewMemTransport("127.0.0.2:7946")
	defer b2.Shutdown()
	require.NoError(t, b.Shutdown()) // a late repeat leaves b2 alone
	send(t, a, b2, "hello again")
	require.Equal(t, 1, drain(b2))
	_, server := dialCall(t, a, b2)
	require.NotNil(t, server)
	sendRecv(t, dialStream(t, a, b2), recvStream(t, b2), "ok")
}

func TestMemFullBuffers(t *testing.T) {
	nw := NewNetwork()
	nodes := memNodes(t, nw, 2)
	a, b := nodes[0], nodes[1]

	// Nobody reads b's packets: sends keep returning, extras are dropped.
	const extra = 100
	for range PacketBuffer + extra {
		send(t, a, b, "x")
	}
	require.Len(t, b.PacketCh(), PacketBuffer)
	require.Equal(t, uint64(extra), b.DroppedPackets())

	// The same with latency: in-flight packets are bounded too.
	nw.SetLatency(time.Hour)
	for range PacketBuffer + extra {
		send(t, a, b, "x")
	}
	require.Equal(t, uint64(2*extra), b.DroppedPackets())
	nw.SetLatency(0)

	// Nobody takes b's streams: once the backlog is full, dials fail fast.
	for range StreamBacklog {
		c, err := a.DialTimeout(b.GossipAddr(), time.Second)
		require.NoError(t, err)
		defer c.Close()
	}
	_, err := a.DialTimeout(b.GossipAddr(), time.Second)
	require.ErrorIs(t, err, syscall.EAGAIN)
	for range StreamBacklog {
		c, err := a.DialCall(context.Background(), b.CallAddr())
		require.NoError(t, err)
		defer c.Close()
	}
	_, err = a.DialCall(context.Background(), b.CallAddr())
	require.ErrorIs(t, err, syscall.EAGAIN)
}

func TestMemStreamEnds(t *testing.T) {
	nw := NewNetwork()
	nodes := memNodes(t, nw, 2)
	a, b := nodes[0], nodes[1]

	// Close: the peer drains, then reads EOF; its writes fail.
	client, server := dialCall(t, a, b)
	_, err := client.Write([]byte("bye"))
	require.NoError(t, err)
	require.NoError(t, client.Close())
	got, err := io.ReadAll(server)
	require.NoError(t, err)
	require.Equal(t, "bye", string(got))
	_, err = server.Write([]byte("x"))
	require.ErrorIs(t, err, syscall.EPIPE)
	_, err = client.Read(make([]byte, 1))
	require.ErrorIs(t, err, net.ErrClosed)
	_, err = client.Write([]byte("x"))
	require.ErrorIs(t, err, net.ErrClosed)
	require.ErrorIs(t, client.Close(), net.ErrClosed)
	require.ErrorIs(t, client.SetDeadline(time.Now()), net.ErrClosed)

	// A passed write deadline fails writes, a cleared one allows them.
	client, server = dialCall(t, a, b)
	require.NoError(t, client.SetWriteDeadline(time.Now().Add(-time.Second)))
	_, err = client.Write([]byte("x"))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.NoError(t, client.SetWriteDeadline(time.Time{}))
	sendRecv(t, client, server, "x")

	// Many small reads of one big write.
	_, err = client.Write([]byte("0123456789"))
	require.NoError(t, err)
	buf := make([]byte, 3)
	var all []byte
	for len(all) < 10 {
		n, err := server.Read(buf)
		require.NoError(t, err)
		all = append(all, buf[:n]...)
	}
	require.Equal(t, "0123456789", string(all))

	// Closing the call listener refuses new calls and fails Accept.
	require.NoError(t, b.CallListener().Close())
	require.ErrorIs(t, b.CallListener().Close(), net.ErrClosed)
	_, err = a.DialCall(context.Background(), b.CallAddr())
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	_, err = b.CallListener().Accept()
	require.ErrorIs(t, err, net.ErrClosed)

	// After its own Shutdown a transport refuses to send.
	require.NoError(t, a.Shutdown())
	_, err = a.WriteTo([]byte("x"), b.GossipAddr())
	require.True(t, errors.Is(err, net.ErrClosed))
}

func TestResponseLossResetsCallStreams(t *testing.T) {
	nw := NewNetwork()
	a, b := nw.NewTransport("10.1.0.1:7946"), nw.NewTransport("10.1.0.2:7946")
	defer a.Shutdown()
	defer b.Shutdown()
	nw.SetResponseLoss(1)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := b.CallListener().Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := a.DialCall(context.Background(), b.CallAddr())
	require.NoError(t, err)
	defer client.Close()
	server := <-accepted
	defer server.Close()
	// Requests still flow; the response resets the connection.
	_, err = client.Write([]byte("req"))
	require.NoError(t, err)
	buf := make([]byte, 3)
	_, err = io.ReadFull(server, buf)
	require.NoError(t, err)
	_, err = server.Write([]byte("resp"))
	require.ErrorIs(t, err, syscall.ECONNRESET)
	_, err = client.Read(buf)
	require.ErrorIs(t, err, syscall.ECONNRESET)
	nw.Heal()
	require.False(t, nw.loseResponse())
}

// Several goroutines reading one stream at once all make progress and all
// see its end; a reused buffer never hands a reader stale bytes.
func TestMemConcurrentReaders(t *testing.T) {
	nw := NewNetwork()
	nodes := memNodes(t, nw, 2)
	client, server := dialCall(t, nodes[0], nodes[1])

	const readers, writes = 4, 2000
	var mu sync.Mutex
	got := make(map[byte]int)
	var wg sync.WaitGroup
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 3)
			for {
				n, err := server.Read(buf)
				mu.Lock()
				for _, c := range buf[:n] {
					got[c]++
				}
				mu.Unlock()
				if err != nil {
					assert.ErrorIs(t, err, io.EOF)
					return
				}
			}
		}()
	}
	// Writes of 1..7 bytes of one letter each, the letter changing from
	// write to write, so a byte read twice or a stale byte of a reused
	// buffer shows up in the counts.
	want := make(map[byte]int)
	for i := 0; i < writes; i++ {
		c, n := byte('a'+i%26), 1+i%7
		_, err := client.Write(bytes.Repeat([]byte{c}, n))
		require.NoError(t, err)
		want[c] += n
	}
	require.NoError(t, client.Close())
	wg.Wait() // every reader returned io.EOF
	require.Equal(t, want, got)
}

// A read deadline can be moved back and forth: only the one set last counts.
func TestMemReadDeadlineMoves(t *testing.T) {
	nw := NewNetwork()
	nodes := memNodes(t, nw, 2)
	client, server := dialCall(t, nodes[0], nodes[1])
	buf := make([]byte, 1)

	// Set far away, then near: the near one fires.
	require.NoError(t, server.SetReadDeadline(time.Now().Add(time.Hour)))
	require.NoError(t, server.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err := server.Read(buf)
	requireOSTimeout(t, err)

	// Set near, then cleared before it passes: the stale timer does not
	// fire, and a later write is read.
	require.NoError(t, server.SetReadDeadline(time.Now().Add(5*time.Millisecond)))
	require.NoError(t, server.SetReadDeadline(time.Time{}))
	time.AfterFunc(30*time.Millisecond, func() { _, _ = client.Write([]byte("x")) })
	n, err := server.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "x", string(buf[:n]))

	// A deadline in the past fails at once; moving it forward allows reads.
	require.NoError(t, server.SetReadDeadline(time.Unix(1, 0)))
	_, err = server.Read(buf)
	requireOSTimeout(t, err)
	require.NoError(t, server.SetReadDeadline(time.Now().Add(time.Hour)))
	sendRecv(t, client, server, "y")
}

// requireOSTimeout checks a read's or write's timeout: a net.Error whose
// Timeout is true, matching os.ErrDeadlineExceeded.
func requireOSTimeout(t *testing.T, err error) {
	t.Helper()
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout(), "not a timeout: %v", err)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
}
