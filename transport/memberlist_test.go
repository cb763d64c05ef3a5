// This file runs real memberlist clusters over both transports: they must
// form, and on the in-memory network a partitioned node must be declared
// dead.

package transport

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/require"
)

// clusterWait bounds how long a cluster may take to converge.
const clusterWait = 20 * time.Second

// startMember starts memberlist over tr with timers shortened for tests.
func startMember(t *testing.T, name string, tr Transport) *memberlist.Memberlist {
	t.Helper()
	conf := memberlist.DefaultLocalConfig()
	conf.Name = name
	conf.Transport = tr
	conf.LogOutput = io.Discard
	conf.ProbeInterval = 100 * time.Millisecond
	conf.ProbeTimeout = 50 * time.Millisecond
	conf.GossipInterval = 20 * time.Millisecond
	conf.PushPullInterval = time.Second
	conf.TCPTimeout = 500 * time.Millisecond
	conf.SuspicionMult = 2
	conf.GossipToTheDeadTime = time.Second
	ml, err := memberlist.Create(conf)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ml.Shutdown() })
	return ml
}

// joinAll joins every member to the first one.
func joinAll(t *testing.T, members []*memberlist.Memberlist, seed string) {
	t.Helper()
	for _, ml := range members[1:] {
		_, err := ml.Join([]string{seed})
		require.NoError(t, err)
	}
}

// requireMembers waits until every member sees want live members.
func requireMembers(t *testing.T, members []*memberlist.Memberlist, want int) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, ml := range members {
			if ml.NumMembers() != want {
				return false
			}
		}
		return true
	}, clusterWait, 20*time.Millisecond, "members never all saw %d nodes", want)
}

func TestMemberlistInMem(t *testing.T) {
	nw := NewNetwork()
	const n = 5
	members := make([]*memberlist.Memberlist, n)
	addrs := make([]string, n)
	for i := range n {
		addrs[i] = fmt.Sprintf("127.0.0.%d:7946", 10+i)
		members[i] = startMember(t, fmt.Sprintf("mem-%d", i), nw.NewTransport(addrs[i]))
	}
	joinAll(t, members, addrs[0])
	requireMembers(t, members, n)

	// Cut the last node off: the others declare it dead.
	nw.Partition(addrs[n-1:], addrs[:n-1])
	requireMembers(t, members[:n-1], n-1)
}

func TestMemberlistNet(t *testing.T) {
	const n = 3
	members := make([]*memberlist.Memberlist, n)
	var seed string
	for i := range n {
		tr, err := NewNet(NetConfig{BindAddr: "127.0.0.1:0"})
		require.NoError(t, err)
		t.Cleanup(func() { _ = tr.Shutdown() })
		if i == 0 {
			seed = tr.GossipAddr()
		}
		members[i] = startMember(t, fmt.Sprintf("net-%d", i), tr)
	}
	joinAll(t, members, seed)
	requireMembers(t, members, n)
}
