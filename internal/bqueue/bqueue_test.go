package bqueue

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLimit(t *testing.T) {
	require.Equal(t, 4, Limit(4, 1))
	require.Equal(t, 4, Limit(4, 3))
	require.Equal(t, 8, Limit(4, 10))
	require.Equal(t, 12, Limit(4, 100))
}

func TestReplaceByName(t *testing.T) {
	q := New(4, func() int { return 3 })
	q.Queue("a", []byte("old"))
	q.Queue("a", []byte("new"))
	require.Equal(t, 1, q.Len())
	require.Equal(t, [][]byte{[]byte("new")}, q.GetBroadcasts(0, 100))
}

func TestTransmitLimitAndOrder(t *testing.T) {
	q := New(2, func() int { return 3 }) // limit 2
	q.Queue("a", []byte("aaaa"))
	require.Equal(t, [][]byte{[]byte("aaaa")}, q.GetBroadcasts(2, 100))
	q.Queue("b", []byte("bbbb"))
	// b has fewer transmissions, so it comes first; only one fits.
	require.Equal(t, [][]byte{[]byte("bbbb")}, q.GetBroadcasts(2, 7))
	// Both sent once now: newest first.
	require.Equal(t, [][]byte{[]byte("bbbb"), []byte("aaaa")}, q.GetBroadcasts(2, 100))
	require.Equal(t, 0, q.Len())
	require.Nil(t, q.GetBroadcasts(2, 100))
}

func TestSkipsWhatDoesNotFit(t *testing.T) {
	q := New(4, func() int { return 3 })
	q.Queue("big", make([]byte, 50))
	q.Queue("small", []byte("s"))
	got := q.GetBroadcasts(1, 10)
	require.Equal(t, [][]byte{[]byte("s")}, got)
	require.Equal(t, 2, q.Len())
}

// TestEqualLengthMessagesNeverLost is the case memberlist's queue got
// wrong: many equal-length messages queued while others are in flight.
func TestEqualLengthMessagesNeverLost(t *testing.T) {
	q := New(1, func() int { return 3 }) // each message sent once
	sent := map[string]int{}
	for round := 0; round < 200; round++ {
		for i := 0; i < 3; i++ {
			q.Queue(fmt.Sprintf("n%d", (round+i)%5), []byte(fmt.Sprintf("r%04d-%d", round, i)))
		}
		for _, m := range q.GetBroadcasts(0, 1<<20) {
			sent[string(m)]++
		}
	}
	require.Len(t, sent, 600)
	for m, c := range sent {
		require.Equal(t, 1, c, m)
	}
}

func BenchmarkGetBroadcasts(b *testing.B) {
	q := New(4, func() int { return 50 })
	msg := make([]byte, 60)
	for i := 0; i < b.N; i++ {
		q.Queue(fmt.Sprint(i%50), msg)
		q.GetBroadcasts(3, 1400)
	}
}

func TestBounds(t *testing.T) {
	q := New(1, func() int { return 10 })
	q.Bound(8, 2)
	if q.Queue("big", make([]byte, 9)) {
		t.Fatal("a message over maxMsg was queued")
	}
	if !q.Queue("a", []byte("a")) || !q.Queue("b", []byte("b")) {
		t.Fatal("messages within the bounds refused")
	}
	if q.Queue("c", []byte("c")) {
		t.Fatal("a third name was queued past maxItems")
	}
	if !q.Queue("a", []byte("a2")) {
		t.Fatal("replacing a queued name must not count against maxItems")
	}
	if q.Len() != 2 {
		t.Fatalf("len %d", q.Len())
	}
}
