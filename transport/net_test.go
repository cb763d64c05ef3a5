// This file tests what only Net does: configuration, advertise addresses
// and bookkeeping of the streams it must close on Shutdown.

package transport

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNetConfigErrors(t *testing.T) {
	for _, cfg := range []NetConfig{
		{BindAddr: "no-port"},
		{BindAddr: "127.0.0.1:notaport"},
		{BindAddr: "127.0.0.1:0", CallBindAddr: "127.0.0.1:-1"},
		{BindAddr: "127.0.0.1:0", AdvertiseAddr: "example.com:7946"},
		{BindAddr: "127.0.0.1:0", AdvertiseAddr: "10.0.0.1:0"},
	} {
		_, err := NewNet(cfg)
		require.Error(t, err, "%+v", cfg)
		require.True(t, strings.HasPrefix(err.Error(), "transport: "), err.Error())
	}

	// A port in use is reported with the address.
	first, err := NewNet(NetConfig{BindAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	defer first.Shutdown()
	_, err = NewNet(NetConfig{BindAddr: first.GossipAddr()})
	require.ErrorContains(t, err, first.GossipAddr())
	_, err = NewNet(NetConfig{BindAddr: "127.0.0.1:0", CallBindAddr: first.CallAddr()})
	require.ErrorContains(t, err, first.CallAddr())
}

func TestNetAddresses(t *testing.T) {
	tr, err := NewNet(NetConfig{BindAddr: "127.0.0.1:0", AdvertiseAddr: "10.1.2.3:1234"})
	require.NoError(t, err)
	defer tr.Shutdown()

	host, port, err := net.SplitHostPort(tr.GossipAddr())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	require.NotEqual(t, "0", port)
	callHost, _, err := net.SplitHostPort(tr.CallAddr())
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", callHost)
	require.NotEqual(t, tr.GossipAddr(), tr.CallAddr())

	ip, p, err := tr.FinalAdvertiseAddr("", 0)
	require.NoError(t, err)
	require.Equal(t, "10.1.2.3", ip.String())
	require.Equal(t, 1234, p)
	ip, p, err = tr.FinalAdvertiseAddr("10.9.9.9", 99)
	require.NoError(t, err)
	require.Equal(t, "10.9.9.9", ip.String())
	require.Equal(t, 99, p)

	// Without AdvertiseAddr, the bound address.
	plain, err := NewNet(NetConfig{BindAddr: "localhost:0"})
	require.NoError(t, err)
	defer plain.Shutdown()
	ip, p, err = plain.FinalAdvertiseAddr("", 0)
	require.NoError(t, err)
	require.Equal(t, plain.GossipAddr(), net.JoinHostPort(ip.String(), itoa(p)))
}

func TestNetDialCallIsTCP(t *testing.T) {
	a, err := NewNet(NetConfig{BindAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	defer a.Shutdown()
	b, err := NewNet(NetConfig{BindAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	defer b.Shutdown()

	client, server := dialCall(t, a, b)
	require.IsType(t, (*net.TCPConn)(nil), client)
	require.IsType(t, (*net.TCPConn)(nil), server)
}

func TestNetForgetsClosedStreams(t *testing.T) {
	a, err := NewNet(NetConfig{BindAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	defer a.Shutdown()
	b, err := NewNet(NetConfig{BindAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	defer b.Shutdown()

	const rounds = 5 * minPrune
	for range rounds {
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := b.CallListener().Accept()
			if err == nil {
				accepted <- c
			}
			close(accepted)
		}()
		c, err := a.DialCall(context.Background(), b.CallAddr())
		require.NoError(t, err)
		require.NoError(t, c.Close())
		s, ok := <-accepted
		require.True(t, ok)
		require.NoError(t, s.Close())
	}
	require.LessOrEqual(t, a.conns.len(), 2*minPrune)
	require.LessOrEqual(t, b.conns.len(), 2*minPrune)
}

func itoa(i int) string { return strconv.Itoa(i) }

// A bind-all node advertises routable addresses, for gossip and calls.
func TestBindAllAdvertisesRoutableAddrs(t *testing.T) {
	n, err := NewNet(NetConfig{BindAddr: "0.0.0.0:0"})
	if err != nil {
		t.Skipf("no private IP to advertise on this machine: %v", err)
	}
	defer n.Shutdown()
	host, _, err := net.SplitHostPort(n.CallAddr())
	require.NoError(t, err)
	ip := net.ParseIP(host)
	require.NotNil(t, ip)
	require.False(t, ip.IsUnspecified(), "call address %s", n.CallAddr())
	gip, _, err := n.FinalAdvertiseAddr("", 0)
	require.NoError(t, err)
	require.False(t, gip.IsUnspecified())

	adv, err := NewNet(NetConfig{BindAddr: "0.0.0.0:0", AdvertiseAddr: "10.1.2.3:7946", AdvertiseCallAddr: "10.1.2.3:7000"})
	require.NoError(t, err)
	defer adv.Shutdown()
	require.Equal(t, "10.1.2.3:7000", adv.CallAddr())
	adv2, err := NewNet(NetConfig{BindAddr: "0.0.0.0:0", AdvertiseAddr: "10.1.2.3:7946"})
	require.NoError(t, err)
	defer adv2.Shutdown()
	require.True(t, strings.HasPrefix(adv2.CallAddr(), "10.1.2.3:"), "the call address takes the advertised gossip IP: %s", adv2.CallAddr())
}
