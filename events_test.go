package aegis

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSlowSubscriberDoesNotBlock(t *testing.T) {
	c := newCluster(t, 2, false)
	block := make(chan struct{})
	var got []Event
	done := make(chan struct{})
	// Local changes give a deterministic event sequence on the local node
	// (a remote node may skip a short-lived intermediate status).
	cancelSlow := c.nodes[1].Subscribe(func(Event) { <-block })
	unblocked := false
	t.Cleanup(func() {
		if !unblocked {
			close(block)
		}
	})
	var fast eventLog
	c.nodes[1].Subscribe(fast.add)
	c.waitConverged(10 * time.Second)
	_, err := c.nodes[1].Register(context.Background(), Service{Name: "other", InstanceID: "o1", Handler: echoHandler})
	require.NoError(t, err)
	c.regs[1].SetStatus(StatusDegraded)
	c.regs[1].SetStatus(StatusHealthy)
	// The fast subscriber sees events in order while the slow one is stuck.
	require.Eventually(t, func() bool {
		return fast.has(EventRegistered, "o1", StatusHealthy, "registered") &&
			fast.has(EventStatusChanged, "inst-1", StatusHealthy, "self-reported")
	}, 10*time.Second, 5*time.Millisecond)
	fast.mu.Lock()
	got = append(got, fast.evs...)
	fast.mu.Unlock()
	var seq []Status
	for _, e := range got {
		if e.Type == EventStatusChanged && e.Instance.ID == "inst-1" {
			seq = append(seq, e.NewStatus)
		}
	}
	require.Equal(t, []Status{StatusDegraded, StatusHealthy}, seq, "in order")
	go func() { cancelSlow(); close(done) }()
	unblocked = true
	close(block)
	<-done
}
