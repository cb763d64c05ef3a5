// This file tests flag and config-file parsing, the secret key, the logger
// and the aegis.Config the flags make.

package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis"
)

// writeTemp writes content to a new file in t's temporary directory.
func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func TestParseAgent(t *testing.T) {
	cfgFile := writeTemp(t, "agent.json", `{
		"name": "from-file", "bind": "127.0.0.1:9000", "join": ["a:1", "b:2"],
		"serve": "echo,count:cnt", "heartbeat-interval": "200ms", "allow-insecure": true,
		"leave-timeout": "3s", "gossip": "local"}`)
	tests := []struct {
		name    string
		args    []string
		check   func(t *testing.T, o *agentOptions)
		wantErr string
	}{
		{name: "defaults", args: nil, check: func(t *testing.T, o *agentOptions) {
			assert.Equal(t, "127.0.0.1:7946", o.node.bind)
			assert.Equal(t, "lan", o.node.gossip)
			assert.Equal(t, 10*time.Second, o.leaveTimeout)
			assert.Equal(t, 30*time.Second, o.node.joinTimeout)
			assert.Equal(t, 5*time.Second, o.node.hbInterval)
			assert.Equal(t, 30*time.Second, o.node.hbTimeout)
			assert.Empty(t, o.specs)
			assert.Empty(t, o.node.join)
		}},
		{name: "join comma list and repeated", args: []string{"-join", "a:1, b:2,", "-join", "c:3"}, check: func(t *testing.T, o *agentOptions) {
			assert.Equal(t, listFlag{"a:1", "b:2", "c:3"}, o.node.join)
		}},
		{name: "serve kinds and names", args: []string{"-serve", "echo,count:cnt", "-serve", "sleep:slow", "-instance-id", "x1"}, check: func(t *testing.T, o *agentOptions) {
			assert.Equal(t, []serveSpec{{"echo", "echo", aegis.RoleNone}, {"count", "cnt", aegis.RoleNone}, {"sleep", "slow", aegis.RoleNone}}, o.specs)
			assert.Equal(t, "x1", o.instanceID)
		}},
		{name: "durations and switches", args: []string{"-heartbeat-interval", "250ms", "-heartbeat-timeout", "2s", "-health-check-interval", "50ms",
			"-leave-timeout", "1s", "-join-timeout", "0", "-allow-insecure", "-gossip", "local", "-cluster", "c1"}, check: func(t *testing.T, o *agentOptions) {
			assert.Equal(t, 250*time.Millisecond, o.node.hbInterval)
			assert.Equal(t, 2*time.Second, o.node.hbTimeout)
			assert.Equal(t, 50*time.Millisecond, o.node.healthInterval)
			assert.Equal(t, time.Second, o.leaveTimeout)
			assert.Zero(t, o.node.joinTimeout)
			assert.True(t, o.node.allowInsecure)
			assert.Equal(t, "local", o.node.gossip)
			assert.Equal(t, "c1", o.node.cluster)
		}},
		{name: "config file", args: []string{"-config", cfgFile}, check: func(t *testing.T, o *agentOptions) {
			assert.Equal(t, "from-file", o.node.name)
			assert.Equal(t, "127.0.0.1:9000", o.node.bind)
			assert.Equal(t, listFlag{"a:1", "b:2"}, o.node.join)
			assert.Equal(t, []serveSpec{{"echo", "echo", aegis.RoleNone}, {"count", "cnt", aegis.RoleNone}}, o.specs)
			assert.Equal(t, 200*time.Millisecond, o.node.hbInterval)
			assert.True(t, o.node.allowInsecure)
			assert.Equal(t, 3*time.Second, o.leaveTimeout)
			assert.Equal(t, "local", o.node.gossip)
		}},
		{name: "flags win over the config file", args: []string{"-name", "from-flag", "-join", "z:9", "-config", cfgFile, "-allow-insecure=false"},
			check: func(t *testing.T, o *agentOptions) {
				assert.Equal(t, "from-flag", o.node.name)
				assert.Equal(t, listFlag{"z:9"}, o.node.join)
				assert.False(t, o.node.allowInsecure)
				assert.Equal(t, "127.0.0.1:9000", o.node.bind, "keys the command line leaves out still come from the file")
			}},
		{name: "config number for a duration is refused", args: []string{"-config", writeTemp(t, "n.json", `{"leave-timeout": 3}`)},
			wantErr: `key "leave-timeout"`},
		{name: "unknown promotion mode", args: []string{"-promotion", "sometimes"}, wantErr: `-promotion "sometimes"`},
		{name: "config unknown key", args: []string{"-config", writeTemp(t, "u.json", `{"bind": "127.0.0.1:1", "colour": "blue"}`)},
			wantErr: `unknown key "colour"`},
		{name: "config naming a config", args: []string{"-config", writeTemp(t, "c.json", `{"config": "other.json"}`)},
			wantErr: `unknown key "config"`},
		{name: "config not an object", args: []string{"-config", writeTemp(t, "a.json", `["bind"]`)},
			wantErr: "not a JSON object"},
		{name: "config trailing data", args: []string{"-config", writeTemp(t, "t.json", `{} {}`)},
			wantErr: "trailing data"},
		{name: "config array of numbers", args: []string{"-config", writeTemp(t, "j.json", `{"join": [1, 2]}`)},
			wantErr: "array items must be strings"},
		{name: "config object value", args: []string{"-config", writeTemp(t, "o.json", `{"name": {"x": 1}}`)},
			wantErr: `key "name": want a string`},
		{name: "config missing file", args: []string{"-config", filepath.Join(t.TempDir(), "missing.json")},
			wantErr: "-config: open"},
		{name: "unknown flag", args: []string{"-bogus"}, wantErr: "flag provided but not defined: -bogus"},
		{name: "bad duration", args: []string{"-heartbeat-interval", "often"}, wantErr: "invalid value \"often\""},
		{name: "positional argument", args: []string{"extra"}, wantErr: `unexpected argument "extra"`},
		{name: "unknown serve kind", args: []string{"-serve", "echo,nope:x"}, wantErr: `unknown kind "nope" (known: echo, sleep, fail, count)`},
		{name: "service served twice", args: []string{"-serve", "echo:a,count:a"}, wantErr: `service "a" is served twice`},
		{name: "zero leave timeout", args: []string{"-leave-timeout", "0s"}, wantErr: "-leave-timeout must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseAgent(tt.args, &bytes.Buffer{})
			if tt.wantErr != "" {
				require.Error(t, err)
				var ue *usageError
				assert.True(t, errors.As(err, &ue), "a usage error: %v", err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			tt.check(t, o)
		})
	}
}

func TestParseLoad(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(t *testing.T, o *loadOptions)
		wantErr string
	}{
		{name: "defaults", args: []string{"-service", "s", "-join", "a:1"}, check: func(t *testing.T, o *loadOptions) {
			assert.Equal(t, listFlag{"whoami"}, o.methods)
			assert.Empty(t, o.callsFile)
			assert.Equal(t, "127.0.0.1:0", o.node.bind)
			assert.Equal(t, 100.0, o.rate)
			assert.Equal(t, 10*time.Second, o.duration)
			assert.Equal(t, 5*time.Second, o.timeout)
			assert.Equal(t, aegis.DefaultConfig().AttemptTimeout, o.attemptTimeout)
		}},
		{name: "all set", args: []string{"-service", "s", "-join", "a:1", "-method", "echo,once", "-method", "x", "-payload", "hi", "-rate", "250.5",
			"-duration", "0", "-timeout", "1s", "-attempt-timeout", "100ms", "-wait", "2s", "-calls-file", "calls.jsonl"}, check: func(t *testing.T, o *loadOptions) {
			assert.Equal(t, listFlag{"echo", "once", "x"}, o.methods)
			assert.Equal(t, "calls.jsonl", o.callsFile)
			assert.Equal(t, "hi", o.payload)
			assert.Equal(t, 250.5, o.rate)
			assert.Zero(t, o.duration)
			assert.Equal(t, time.Second, o.timeout)
			assert.Equal(t, 100*time.Millisecond, o.attemptTimeout)
			assert.Equal(t, 2*time.Second, o.wait)
		}},
		{name: "config file with a number", args: []string{"-config", writeTemp(t, "l.json", `{"service": "s", "join": "a:1", "rate": 20}`)},
			check: func(t *testing.T, o *loadOptions) {
				assert.Equal(t, 20.0, o.rate)
				assert.Equal(t, "s", o.service)
			}},
		{name: "no service", args: []string{"-join", "a:1"}, wantErr: "-service is required"},
		{name: "no seeds", args: []string{"-service", "s"}, wantErr: "-join is required"},
		{name: "zero rate", args: []string{"-service", "s", "-join", "a:1", "-rate", "0"}, wantErr: "-rate must be positive"},
		{name: "negative duration", args: []string{"-service", "s", "-join", "a:1", "-duration", "-1s"}, wantErr: "-duration must not be negative"},
		{name: "zero timeout", args: []string{"-service", "s", "-join", "a:1", "-timeout", "0s"}, wantErr: "-timeout must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseLoad(tt.args, &bytes.Buffer{})
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			tt.check(t, o)
		})
	}
}

func TestSecretKey(t *testing.T) {
	key32 := bytes.Repeat([]byte{7}, 32)
	key16 := bytes.Repeat([]byte{1}, 16)
	b64 := base64.StdEncoding.EncodeToString
	keyFile := writeTemp(t, "key", "  "+b64(key16)+"\n")
	tests := []struct {
		name    string
		flags   nodeFlags
		env     string
		want    []byte
		wantErr string
	}{
		{name: "none", want: nil},
		{name: "flag", flags: nodeFlags{key: b64(key32)}, want: key32},
		{name: "flag unpadded", flags: nodeFlags{key: base64.RawStdEncoding.EncodeToString(key16)}, want: key16},
		{name: "file, white space trimmed", flags: nodeFlags{keyFile: keyFile}, want: key16},
		{name: "environment", env: b64(key32), want: key32},
		{name: "flag wins over environment", flags: nodeFlags{key: b64(key16)}, env: b64(key32), want: key16},
		{name: "file wins over environment", flags: nodeFlags{keyFile: keyFile}, env: b64(key32), want: key16},
		{name: "flag and file", flags: nodeFlags{key: b64(key16), keyFile: keyFile}, wantErr: "-key and -key-file: give one, not both"},
		{name: "not base64", flags: nodeFlags{key: "not*base64"}, wantErr: "-key: not valid base64"},
		{name: "wrong length", flags: nodeFlags{key: b64(make([]byte, 10))}, wantErr: "-key: decodes to 10 bytes; a key is 16, 24 or 32 bytes"},
		{name: "bad environment", env: "short", wantErr: "$AEGIS_KEY: "},
		{name: "missing file", flags: nodeFlags{keyFile: filepath.Join(t.TempDir(), "nope")}, wantErr: "-key-file: open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == keyEnv {
					return tt.env
				}
				return ""
			}
			got, err := tt.flags.secretKey(getenv)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestNodeConfig(t *testing.T) {
	base := func() nodeFlags {
		o, err := parseAgent(nil, &bytes.Buffer{})
		require.NoError(t, err)
		return o.node
	}
	noEnv := func(string) string { return "" }
	tests := []struct {
		name    string
		edit    func(f *nodeFlags)
		check   func(t *testing.T, c *aegis.Config)
		wantErr string
	}{
		{name: "defaults", edit: func(*nodeFlags) {}, check: func(t *testing.T, c *aegis.Config) {
			d := aegis.DefaultConfig()
			assert.Equal(t, "127.0.0.1:7946", c.BindAddr)
			assert.Equal(t, aegis.LANGossip(), c.Gossip)
			assert.Equal(t, d.HeartbeatInterval, c.HeartbeatInterval)
			assert.Equal(t, d.HeartbeatTimeout, c.HeartbeatTimeout)
			assert.Nil(t, c.SecretKey)
			assert.Empty(t, c.NodeName)
		}},
		{name: "everything", edit: func(f *nodeFlags) {
			f.name, f.bind, f.advertise, f.callBind, f.advertiseCall = "n1", "127.0.0.1:7000", "10.0.0.1:7000", "127.0.0.1:7001", "10.0.0.1:7001"
			f.gossip, f.cluster, f.key = "local", "prod", base64.StdEncoding.EncodeToString(make([]byte, 24))
			f.hbInterval, f.hbTimeout, f.healthInterval = 100*time.Millisecond, time.Second, 50*time.Millisecond
		}, check: func(t *testing.T, c *aegis.Config) {
			assert.Equal(t, "n1", c.NodeName)
			assert.Equal(t, "10.0.0.1:7000", c.AdvertiseAddr)
			assert.Equal(t, "127.0.0.1:7001", c.CallAddr)
			assert.Equal(t, "10.0.0.1:7001", c.AdvertiseCallAddr)
			assert.Equal(t, aegis.LocalGossip(), c.Gossip)
			assert.Equal(t, "prod", c.ClusterName)
			assert.Len(t, c.SecretKey, 24)
			assert.Equal(t, 100*time.Millisecond, c.HeartbeatInterval)
			assert.Equal(t, time.Second, c.HeartbeatTimeout)
			assert.Equal(t, 50*time.Millisecond, c.HealthCheckInterval)
		}},
		{name: "non-loopback with -allow-insecure", edit: func(f *nodeFlags) { f.bind, f.allowInsecure = "0.0.0.0:7946", true },
			check: func(t *testing.T, c *aegis.Config) { assert.True(t, c.AllowInsecure) }},
		{name: "non-loopback without a key", edit: func(f *nodeFlags) { f.bind = "0.0.0.0:7946" }, wantErr: "SecretKey is required to bind 0.0.0.0:7946"},
		{name: "bad gossip profile", edit: func(f *nodeFlags) { f.gossip = "wan" }, wantErr: `-gossip "wan": want lan, fast or local`},
		{name: "fast gossip profile", edit: func(f *nodeFlags) { f.gossip = "fast" },
			check: func(t *testing.T, c *aegis.Config) { assert.Equal(t, aegis.FastLANGossip(), c.Gossip) }},
		{name: "timeout below twice the interval", edit: func(f *nodeFlags) { f.hbInterval, f.hbTimeout = time.Second, time.Second },
			wantErr: "HeartbeatTimeout (1s) must be at least 2×HeartbeatInterval"},
		{name: "bad bind", edit: func(f *nodeFlags) { f.bind = "nohost" }, wantErr: "BindAddr"},
		{name: "advertise without an IP", edit: func(f *nodeFlags) { f.advertiseCall = "example.com:1" }, wantErr: "AdvertiseCallAddr"},
		{name: "bad key", edit: func(f *nodeFlags) { f.key = "abc" }, wantErr: "-key: decodes to 2 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := base()
			tt.edit(&f)
			c, err := f.nodeConfig(nil, noEnv)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		level, format string
		wantErr       string
		wantOut       string
	}{
		{"info", "text", "", "level=INFO msg=hello"},
		{"warn", "json", "", ""},
		{"debug", "json", "", `"msg":"hello"`},
		{"loud", "text", `-log-level "loud"`, ""},
		{"info", "xml", `-log-format "xml": want text or json`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.level+"/"+tt.format, func(t *testing.T) {
			f := nodeFlags{logLevel: tt.level, logFormat: tt.format}
			var buf bytes.Buffer
			log, err := f.newLogger(&buf)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			log.Info("hello")
			if tt.wantOut == "" {
				assert.Empty(t, buf.String())
			} else {
				assert.Contains(t, buf.String(), tt.wantOut)
			}
		})
	}
}
