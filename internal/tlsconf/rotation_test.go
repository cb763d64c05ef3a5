// This file tests key rotation: install a new key everywhere, make it
// primary one node at a time, remove the old one, with every pair of nodes
// able to connect at every step.

package tlsconf

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requireMesh checks that every node connects to every other.
func requireMesh(t *testing.T, step string, nodes map[string]*Creds) {
	t.Helper()
	for cn, cli := range nodes {
		for sn, srv := range nodes {
			if cn == sn {
				continue
			}
			t.Run(fmt.Sprintf("%s/%s-to-%s", step, cn, sn), func(t *testing.T) {
				requireOK(t, connect(t, srv, cli, sn, "tcp"), cn, sn)
			})
		}
	}
}

func TestRotationWithoutDowntime(t *testing.T) {
	k1, k2 := key(1), key(2)
	rings := map[string]*testRing{"a": newRing(k1, k1), "b": newRing(k1, k1), "c": newRing(k1, k1)}
	nodes := map[string]*Creds{}
	for name, r := range rings {
		nodes[name] = derived(t, name, r)
	}
	requireMesh(t, "k1", nodes)

	for _, r := range rings {
		r.install(k2)
	}
	requireMesh(t, "k2-installed", nodes)

	for _, name := range []string{"a", "b", "c"} {
		rings[name].use(k2)
		requireMesh(t, "k2-primary-on-"+name, nodes)
	}

	for _, r := range rings {
		r.remove(k1)
	}
	requireMesh(t, "k1-removed", nodes)

	// A node that still has only the old key is refused, both ways.
	stale := derived(t, "stale", newRing(k1, k1))
	o := connect(t, nodes["a"], stale, "a", "tcp")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer)
	o = connect(t, stale, nodes["a"], "stale", "tcp")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer)
}

func TestPrimaryBeforeInstallEverywhereIsRefused(t *testing.T) {
	// Why rotation installs everywhere first: a node whose primary is a key
	// its peer lacks presents a certificate the peer cannot trust.
	k1, k2 := key(1), key(2)
	a := derived(t, "a", newRing(k1, k1))
	b := derived(t, "b", newRing(k2, k1, k2))

	o := connect(t, b, a, "b", "tcp")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer, "a does not trust b's certificate")
	require.ErrorContains(t, o.cliErr, "not signed by the cluster key")

	o = connect(t, a, b, "a", "tcp")
	require.ErrorIs(t, o.srvErr, ErrUntrustedPeer, "b trusts a, but a refuses b")
	require.ErrorIs(t, o.cliErr, ErrUntrustedPeer)
}

// greeter serves l, writing a greeting on every connection, until l closes.
func greeter(l net.Listener) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = conn.SetDeadline(time.Now().Add(testWait))
				_, _ = conn.Write([]byte("hello"))
				closeRaw(conn.(*tls.Conn))
			}()
		}
	}()
	return wg.Wait
}

// TestRotationUnderLoad rotates while connections are made without pause
// in both directions: none may fail. Between steps it waits until every
// worker has completed a connection begun after the step, so that no
// handshake spans two steps (in a cluster, steps are seconds apart).
func TestRotationUnderLoad(t *testing.T) {
	k1, k2 := key(1), key(2)
	rings := []*testRing{newRing(k1, k1), newRing(k1, k1)}
	creds := []*Creds{derived(t, "a", rings[0]), derived(t, "b", rings[1])}
	var dials []func() (net.Conn, error)
	for i, c := range creds {
		inner, dial := listen(t, "tcp")
		l := c.Listener(inner, ListenerOptions{OnError: func(err error) { t.Error("server", i, err) }})
		wait := greeter(l)
		defer wait()
		defer l.Close()
		dials = append(dials, dial)
	}

	const workers = 4
	var gen atomic.Int64
	done := make([]atomic.Int64, workers) // the latest gen a completed connection began in
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait() // runs before the listeners close, even when a step fails
	defer close(stop)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from, to := w%2, 1-w%2
			for {
				select {
				case <-stop:
					return
				default:
				}
				g := gen.Load()
				_, _, err := dialAndRead(t, creds[from], dials[to], creds[to].Node())
				if assert.NoError(t, err, "step %d", g) {
					done[w].Store(g)
				}
			}
		}()
	}
	step := func(f func(r *testRing)) {
		for _, r := range rings {
			f(r)
			g := gen.Add(1)
			require.Eventually(t, func() bool {
				for w := range done {
					if done[w].Load() < g {
						return false
					}
				}
				return true
			}, testWait, time.Millisecond)
		}
	}
	step(func(r *testRing) { r.install(k2) })
	step(func(r *testRing) { r.use(k2) })
	step(func(r *testRing) { r.remove(k1) })
}
