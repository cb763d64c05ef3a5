package aegis

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/rpc"
)

func TestValidate(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())
	require.NotSame(t, DefaultConfig(), DefaultConfig())
	type tc struct {
		field string
		mod   func(c *Config)
	}
	cases := []tc{
		{"NodeName", func(c *Config) { c.NodeName = "bad name" }},
		{"NodeName", func(c *Config) { c.NodeName = strings.Repeat("n", 129) }},
		{"BindAddr", func(c *Config) { c.BindAddr = "nohost" }},
		{"BindAddr", func(c *Config) { c.BindAddr = ":7946" }},
		{"BindAddr", func(c *Config) { c.BindAddr = "127.0.0.1:99999" }},
		{"BindAddr", func(c *Config) { c.BindAddr = "127.0.0.1:port" }},
		{"AdvertiseAddr", func(c *Config) { c.AdvertiseAddr = "noport" }},
		{"AdvertiseAddr", func(c *Config) { c.AdvertiseAddr = "example:0" }},
		{"AdvertiseAddr", func(c *Config) { c.AdvertiseAddr = "example.com:7946" }},
		{"AdvertiseAddr", func(c *Config) { c.AdvertiseAddr = "10.0.0.1:0" }},
		{"CallAddr", func(c *Config) { c.CallAddr = "nohost" }},
		{"AdvertiseCallAddr", func(c *Config) { c.AdvertiseCallAddr = "example.com:7000" }},
		{"AdvertiseCallAddr", func(c *Config) { c.AdvertiseCallAddr = "10.0.0.1:0" }},
		{"HeartbeatTimeout", func(c *Config) { c.HeartbeatTimeout = 9 * time.Second }},
		{"ReapTimeout", func(c *Config) { c.ReapTimeout = time.Second }},
		{"Gossip.ProbeTimeout", func(c *Config) { c.Gossip.ProbeTimeout = c.Gossip.ProbeInterval }},
		{"EjectMaxTime", func(c *Config) { c.EjectMaxTime = c.EjectBaseTime / 2 }},
		{"RetryBudgetRatio", func(c *Config) { c.RetryBudgetRatio = -0.1 }},
		{"RetryBudgetRatio", func(c *Config) { c.RetryBudgetRatio = 1.5 }},
		{"DedupMaxBytes", func(c *Config) { c.DedupMaxBytes = 0 }},
		{"SecretKey", func(c *Config) { c.SecretKey = []byte("short") }},
	}
	// Every duration must be positive.
	durations := map[string]func(c *Config) *time.Duration{
		"HeartbeatInterval":          func(c *Config) *time.Duration { return &c.HeartbeatInterval },
		"HeartbeatTimeout":           func(c *Config) *time.Duration { return &c.HeartbeatTimeout },
		"HealthCheckInterval":        func(c *Config) *time.Duration { return &c.HealthCheckInterval },
		"ReapTimeout":                func(c *Config) *time.Duration { return &c.ReapTimeout },
		"AttemptTimeout":             func(c *Config) *time.Duration { return &c.AttemptTimeout },
		"EjectBaseTime":              func(c *Config) *time.Duration { return &c.EjectBaseTime },
		"EjectMaxTime":               func(c *Config) *time.Duration { return &c.EjectMaxTime },
		"SameInstanceBackoff":        func(c *Config) *time.Duration { return &c.SameInstanceBackoff },
		"DedupWindow":                func(c *Config) *time.Duration { return &c.DedupWindow },
		"Gossip.ProbeInterval":       func(c *Config) *time.Duration { return &c.Gossip.ProbeInterval },
		"Gossip.ProbeTimeout":        func(c *Config) *time.Duration { return &c.Gossip.ProbeTimeout },
		"Gossip.GossipInterval":      func(c *Config) *time.Duration { return &c.Gossip.GossipInterval },
		"Gossip.PushPullInterval":    func(c *Config) *time.Duration { return &c.Gossip.PushPullInterval },
		"Gossip.GossipToTheDeadTime": func(c *Config) *time.Duration { return &c.Gossip.GossipToTheDeadTime },
		"Gossip.TCPTimeout":          func(c *Config) *time.Duration { return &c.Gossip.TCPTimeout },
		"Gossip.ReconnectInterval":   func(c *Config) *time.Duration { return &c.Gossip.ReconnectInterval },
		"Gossip.ReconnectTimeout":    func(c *Config) *time.Duration { return &c.Gossip.ReconnectTimeout },
	}
	for field, d := range durations {
		cases = append(cases, tc{field, func(c *Config) { *d(c) = 0 }}, tc{field, func(c *Config) { *d(c) = -time.Second }})
	}
	// Every count has a minimum.
	counts := map[string]struct {
		p   func(c *Config) *int
		min int
	}{
		"MaxAttempts":                    {func(c *Config) *int { return &c.MaxAttempts }, 1},
		"Gossip.SuspicionMult":           {func(c *Config) *int { return &c.Gossip.SuspicionMult }, 1},
		"Gossip.GossipNodes":             {func(c *Config) *int { return &c.Gossip.GossipNodes }, 1},
		"Gossip.RetransmitMult":          {func(c *Config) *int { return &c.Gossip.RetransmitMult }, 1},
		"Gossip.HeartbeatRetransmitMult": {func(c *Config) *int { return &c.Gossip.HeartbeatRetransmitMult }, 0},
		"MaxFrameSize":                   {func(c *Config) *int { return &c.MaxFrameSize }, rpc.MinMaxFrameSize},
		"RetryBudgetMinPerSecond":        {func(c *Config) *int { return &c.RetryBudgetMinPerSecond }, 0},
		"EjectAfterFailures":             {func(c *Config) *int { return &c.EjectAfterFailures }, 0},
		"SameInstanceRetries":            {func(c *Config) *int { return &c.SameInstanceRetries }, 0},
		"DedupMaxEntries":                {func(c *Config) *int { return &c.DedupMaxEntries }, 0},
	}
	for field, v := range counts {
		cases = append(cases, tc{field, func(c *Config) { *v.p(c) = v.min - 1 }})
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
	// The boundaries themselves are valid.
	for _, v := range counts {
		c := DefaultConfig()
		*v.p(c) = max(v.min, 1)
		require.NoError(t, c.Validate())
	}
	for _, key := range []int{16, 24, 32} {
		c := DefaultConfig()
		c.SecretKey = make([]byte, key)
		require.NoError(t, c.Validate())
	}
	c := DefaultConfig()
	c.DedupMaxEntries, c.DedupMaxBytes = 0, 0
	require.NoError(t, c.Validate(), "no byte bound needed without dedup")
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

// TestGossipProfiles: every shipped profile is a valid configuration, and
// the fast LAN profile probes faster than the LAN one without going below
// LocalGossip's loopback timings.
func TestGossipProfiles(t *testing.T) {
	for name, g := range map[string]GossipConfig{"lan": LANGossip(), "fast": FastLANGossip(), "local": LocalGossip()} {
		c := DefaultConfig()
		c.Gossip = g
		require.NoError(t, c.Validate(), name)
	}
	fast, lan, local := FastLANGossip(), LANGossip(), LocalGossip()
	require.Less(t, fast.ProbeInterval, lan.ProbeInterval)
	require.GreaterOrEqual(t, fast.ProbeInterval, local.ProbeInterval)
	require.GreaterOrEqual(t, fast.SuspicionMult, local.SuspicionMult)
	require.Equal(t, lan.PushPullInterval, fast.PushPullInterval)
}
