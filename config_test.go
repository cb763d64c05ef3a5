package aegis

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestValidate(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())
	require.NotSame(t, DefaultConfig(), DefaultConfig())
	cases := []struct {
		field string
		mod   func(c *Config)
	}{
		{"HeartbeatInterval", func(c *Config) { c.HeartbeatInterval = 0 }},
		{"HeartbeatTimeout", func(c *Config) { c.HeartbeatTimeout = -time.Second }},
		{"HeartbeatTimeout", func(c *Config) { c.HeartbeatTimeout = 9 * time.Second }},
		{"HealthCheckInterval", func(c *Config) { c.HealthCheckInterval = 0 }},
		{"ReapTimeout", func(c *Config) { c.ReapTimeout = time.Second }},
		{"BindAddr", func(c *Config) { c.BindAddr = "nohost" }},
		{"BindAddr", func(c *Config) { c.BindAddr = "127.0.0.1:99999" }},
		{"AdvertiseAddr", func(c *Config) { c.AdvertiseAddr = "example:0" }},
		{"NodeName", func(c *Config) { c.NodeName = "bad name" }},
		{"MaxAttempts", func(c *Config) { c.MaxAttempts = 0 }},
		{"Gossip.ProbeTimeout", func(c *Config) { c.Gossip.ProbeTimeout = 2 * c.Gossip.ProbeInterval }},
		{"Gossip.GossipNodes", func(c *Config) { c.Gossip.GossipNodes = 0 }},
		{"SecretKey", func(c *Config) { c.SecretKey = []byte("short") }},
		{"DedupMaxBytes", func(c *Config) { c.DedupMaxBytes = 0 }},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		tc.mod(c)
		err := c.Validate()
		require.ErrorIs(t, err, ErrInvalidConfig, tc.field)
		require.True(t, strings.Contains(err.Error(), tc.field), "%q names %s", err, tc.field)
		_, err = New(c)
		require.ErrorIs(t, err, ErrInvalidConfig)
	}
}

func TestNewCopiesConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HeartbeatInterval = time.Second
	cfg.HeartbeatTimeout = 3 * time.Second
	n, err := New(cfg)
	require.NoError(t, err)
	defer n.Shutdown()
	cfg.HeartbeatInterval = time.Hour
	require.Equal(t, time.Second, n.cfg.HeartbeatInterval)
	require.NotEmpty(t, n.Name(), "generated node name")
	require.NotEmpty(t, n.Addr())
}

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
