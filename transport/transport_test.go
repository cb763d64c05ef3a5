// This file holds the test suite every Transport implementation must pass,
// run against both Net (real loopback sockets) and the in-memory Network.

package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait bounds every blocking step of a test; it is generous so that slow CI
// machines do not flake, and only reached when something is broken.
const wait = 5 * time.Second

// impl creates transports of one implementation. newTransport returns a
// fresh transport reachable from the others made by the same factory; it is
// shut down when the test ends.
type impl struct {
	name    string
	factory func(t *testing.T) (newTransport func() Transport)
}

var impls = []impl{
	{"Net", func(t *testing.T) func() Transport {
		return func() Transport {
			tr, err := NewNet(NetConfig{BindAddr: "127.0.0.1:0"})
			require.NoError(t, err)
			t.Cleanup(func() { _ = tr.Shutdown() })
			return tr
		}
	}},
	{"InMem", func(t *testing.T) func() Transport {
		nw := NewNetwork()
		var next atomic.Int32
		return func() Transport {
			tr := nw.NewTransport(fmt.Sprintf("127.0.0.%d:7946", 10+next.Add(1)))
			t.Cleanup(func() { _ = tr.Shutdown() })
			return tr
		}
	}},
}

func TestTransport(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			for _, tc := range suite {
				t.Run(tc.name, func(t *testing.T) {
					tc.run(t, im.factory(t))
				})
			}
		})
	}
}

var suite = []struct {
	name string
	run  func(t *testing.T, newTransport func() Transport)
}{
	{"PacketsBothWays", testPacketsBothWays},
	{"GossipStreamBothWays", testGossipStreamBothWays},
	{"CallRoundTrip", testCallRoundTrip},
	{"ConcurrentWriters", testConcurrentWriters},
	{"ReadDeadline", testReadDeadline},
	{"DialShutDownPeerRefused", testDialShutDownPeerRefused},
	{"ShutdownIdempotentUnblocksAccept", testShutdownIdempotentUnblocksAccept},
	{"ShutdownBreaksStreams", testShutdownBreaksStreams},
}

// gossipAddr is the "ip:port" peers send gossip to.
func gossipAddr(t *testing.T, tr Transport) string {
	t.Helper()
	ip, port, err := tr.FinalAdvertiseAddr("", 0)
	require.NoError(t, err)
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}

func recvPacket(t *testing.T, tr Transport) *memberlist.Packet {
	t.Helper()
	select {
	case p := <-tr.PacketCh():
		return p
	case <-time.After(wait):
		require.FailNow(t, "no packet arrived")
		return nil
	}
}

func recvStream(t *testing.T, tr Transport) net.Conn {
	t.Helper()
	select {
	case c := <-tr.StreamCh():
		t.Cleanup(func() { _ = c.Close() })
		return c
	case <-time.After(wait):
		require.FailNow(t, "no stream arrived")
		return nil
	}
}

func dialStream(t *testing.T, from, to Transport) net.Conn {
	t.Helper()
	c, err := from.DialTimeout(gossipAddr(t, to), wait)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// dialCall dials to's call listener from from and returns both ends.
func dialCall(t *testing.T, from, to Transport) (client, server net.Conn) {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := to.CallListener().Accept()
		accepted <- result{c, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	client, err := from.DialCall(ctx, to.CallAddr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	r := <-accepted
	require.NoError(t, r.err)
	t.Cleanup(func() { _ = r.c.Close() })
	return client, r.c
}

// sendRecv writes msg on w and checks that r reads exactly it.
func sendRecv(t *testing.T, w, r net.Conn, msg string) {
	t.Helper()
	_, err := w.Write([]byte(msg))
	require.NoError(t, err)
	require.NoError(t, r.SetReadDeadline(time.Now().Add(wait)))
	got := make([]byte, len(msg))
	_, err = io.ReadFull(r, got)
	require.NoError(t, err)
	require.Equal(t, msg, string(got))
	require.NoError(t, r.SetReadDeadline(time.Time{}))
}

// requireBroken checks that a read on c fails because the stream ended,
// rather than timing out.
func requireBroken(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wait)))
	_, err := c.Read(make([]byte, 1))
	require.Error(t, err)
	require.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "got %v", err)
}

func testPacketsBothWays(t *testing.T, newTransport func() Transport) {
	a, b := newTransport(), newTransport()
	aAddr, bAddr := gossipAddr(t, a), gossipAddr(t, b)

	for _, dir := range []struct {
		from, to         Transport
		fromAddr, toAddr string
	}{{a, b, aAddr, bAddr}, {b, a, bAddr, aAddr}} {
		before := time.Now()
		sent, err := dir.from.WriteTo([]byte("hello "+dir.fromAddr), dir.toAddr)
		require.NoError(t, err)
		require.False(t, sent.Before(before))
		p := recvPacket(t, dir.to)
		require.Equal(t, "hello "+dir.fromAddr, string(p.Buf))
		require.Equal(t, dir.fromAddr, p.From.String())
		require.False(t, p.Timestamp.Before(before))
	}

	_, err := a.WriteToAddress([]byte("named"), memberlist.Address{Addr: bAddr, Name: "b"})
	require.NoError(t, err)
	require.Equal(t, "named", string(recvPacket(t, b).Buf))
}

func testGossipStreamBothWays(t *testing.T, newTransport func() Transport) {
	a, b := newTransport(), newTransport()
	for _, dir := range [][2]Transport{{a, b}, {b, a}} {
		client := dialStream(t, dir[0], dir[1])
		server := recvStream(t, dir[1])
		sendRecv(t, client, server, "ping")
		sendRecv(t, server, client, "pong")
		require.Equal(t, client.LocalAddr().String(), server.RemoteAddr().String())
		require.Equal(t, gossipAddr(t, dir[1]), client.RemoteAddr().String())
	}

	c, err := a.DialAddressTimeout(memberlist.Address{Addr: gossipAddr(t, b), Name: "b"}, wait)
	require.NoError(t, err)
	defer c.Close()
	sendRecv(t, c, recvStream(t, b), "named")
}

func testCallRoundTrip(t *testing.T, newTransport func() Transport) {
	a, b := newTransport(), newTransport()
	require.Same(t, b.CallListener(), b.CallListener())
	require.Equal(t, b.CallAddr(), b.CallListener().Addr().String())

	client, server := dialCall(t, a, b)
	sendRecv(t, client, server, "request")
	sendRecv(t, server, client, "response")
	require.Equal(t, b.CallAddr(), client.RemoteAddr().String())
	require.Equal(t, b.CallAddr(), server.LocalAddr().String())
	require.Equal(t, client.LocalAddr().String(), server.RemoteAddr().String())

	// And the other way.
	client, server = dialCall(t, b, a)
	sendRecv(t, client, server, "request")
	sendRecv(t, server, client, "response")
}

func testConcurrentWriters(t *testing.T, newTransport func() Transport) {
	a, b := newTransport(), newTransport()
	const writers, perWriter = 8, 50

	// Packets from many goroutines.
	var wg sync.WaitGroup
	bAddr := gossipAddr(t, b)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				_, err := a.WriteTo([]byte(fmt.Sprintf("%d/%d", w, i)), bAddr)
				assert.NoError(t, err)
			}
		})
	}
	seen := make(map[string]bool)
	for range writers * perWriter {
		seen[string(recvPacket(t, b).Buf)] = true
	}
	wg.Wait()
	require.Len(t, seen, writers*perWriter)

	// Many goroutines writing fixed-size records on one stream: every
	// record arrives whole.
	const recLen = 16
	client, server := dialCall(t, a, b)
	for w := range writers {
		wg.Go(func() {
			rec := bytes.Repeat([]byte{byte('a' + w)}, recLen)
			for range perWriter {
				_, err := client.Write(rec)
				assert.NoError(t, err)
			}
		})
	}
	counts := make(map[byte]int)
	require.NoError(t, server.SetReadDeadline(time.Now().Add(wait)))
	rec := make([]byte, recLen)
	for range writers * perWriter {
		_, err := io.ReadFull(server, rec)
		require.NoError(t, err)
		require.Equal(t, bytes.Repeat(rec[:1], recLen), rec)
		counts[rec[0]]++
	}
	wg.Wait()
	for w := range writers {
		require.Equal(t, perWriter, counts[byte('a'+w)])
	}

	// Many streams at once, each carrying a large payload.
	const payload = 256 << 10
	total := make(chan int64, writers)
	for range writers {
		wg.Go(func() {
			c, err := b.CallListener().Accept()
			if !assert.NoError(t, err) {
				return
			}
			defer c.Close()
			assert.NoError(t, c.SetReadDeadline(time.Now().Add(wait)))
			n, err := io.Copy(io.Discard, c)
			assert.NoError(t, err)
			total <- n
		})
	}
	var dials sync.WaitGroup
	for range writers {
		dials.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			c, err := a.DialCall(ctx, b.CallAddr())
			if !assert.NoError(t, err) {
				return
			}
			defer c.Close()
			_, err = c.Write(make([]byte, payload))
			assert.NoError(t, err)
		})
	}
	dials.Wait()
	wg.Wait()
	close(total)
	var sum int64
	for n := range total {
		sum += n
	}
	require.Equal(t, int64(writers*payload), sum)
}

func testReadDeadline(t *testing.T, newTransport func() Transport) {
	a, b := newTransport(), newTransport()
	client, server := dialCall(t, a, b)

	const d = 50 * time.Millisecond
	start := time.Now()
	require.NoError(t, server.SetReadDeadline(start.Add(d)))
	_, err := server.Read(make([]byte, 1))
	require.GreaterOrEqual(t, time.Since(start), d-5*time.Millisecond)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout())

	// A deadline set while a Read is blocked ends that Read.
	done := make(chan error, 1)
	require.NoError(t, client.SetReadDeadline(time.Time{}))
	go func() {
		_, err := client.Read(make([]byte, 1))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the Read block; either order passes
	require.NoError(t, client.SetDeadline(time.Now()))
	select {
	case err := <-done:
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	case <-time.After(wait):
		require.FailNow(t, "blocked Read ignored the new deadline")
	}

	// Clearing the deadline makes the stream usable again.
	require.NoError(t, client.SetDeadline(time.Time{}))
	sendRecv(t, client, server, "still works")
	sendRecv(t, server, client, "both ways")
}

func testDialShutDownPeerRefused(t *testing.T, newTransport func() Transport) {
	a, c := newTransport(), newTransport()
	cGossip, cCall := gossipAddr(t, c), c.CallAddr()
	require.NoError(t, c.Shutdown())

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := a.DialCall(ctx, cCall)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)

	_, err = a.DialTimeout(cGossip, wait)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	require.Less(t, time.Since(start), time.Second)

	// Packets to a dead peer vanish without an error, like UDP.
	_, err = a.WriteTo([]byte("anyone?"), cGossip)
	require.NoError(t, err)
}

func testShutdownIdempotentUnblocksAccept(t *testing.T, newTransport func() Transport) {
	a := newTransport()
	accepted := make(chan error, 1)
	go func() {
		_, err := a.CallListener().Accept()
		accepted <- err
	}()
	require.NoError(t, a.Shutdown())
	require.NoError(t, a.Shutdown())
	select {
	case err := <-accepted:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(wait):
		require.FailNow(t, "Accept still blocked after Shutdown")
	}
	_, err := a.CallListener().Accept()
	require.ErrorIs(t, err, net.ErrClosed)

	// Dialing from a shut-down transport fails.
	b := newTransport()
	_, err = a.DialCall(context.Background(), b.CallAddr())
	require.ErrorIs(t, err, net.ErrClosed)
}

func testShutdownBreaksStreams(t *testing.T, newTransport func() Transport) {
	a, b := newTransport(), newTransport()

	callClient, callServer := dialCall(t, a, b)      // accepted by b
	gossipClient := dialStream(t, a, b)              // accepted by b
	gossipServer := recvStream(t, b)                 //
	ownClient, ownServer := dialCall(t, b, a)        // dialed by b
	sendRecv(t, gossipClient, gossipServer, "hello") // the streams work

	// A read already blocked on b's own stream is released by Shutdown.
	released := make(chan error, 1)
	go func() {
		_, err := callServer.Read(make([]byte, 1))
		released <- err
	}()

	require.NoError(t, b.Shutdown())

	requireBroken(t, callClient)
	requireBroken(t, gossipClient)
	requireBroken(t, ownServer)
	select {
	case err := <-released:
		require.Error(t, err)
	case <-time.After(wait):
		require.FailNow(t, "read on a shut-down transport's stream still blocked")
	}
	_, err := ownClient.Read(make([]byte, 1))
	require.Error(t, err)
	_, err = gossipServer.Write([]byte("x"))
	require.Error(t, err)
}
