// This file holds the test main (goroutine leak check) and tests of the
// command dispatch.

package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestRunDispatch(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantStatus int
		wantOut    string // in stdout
		wantErr    string // in stderr
	}{
		{"no command", nil, 2, "", "usage: aegis <command>"},
		{"unknown command", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"help", []string{"help"}, 0, "agent", ""},
		{"-h", []string{"-h"}, 0, "load", ""},
		{"help agent", []string{"help", "agent"}, 0, "Built-in services", ""},
		{"agent -h", []string{"agent", "-h"}, 0, "-serve KIND[:SERVICE]", ""},
		{"help load", []string{"help", "load"}, 0, "For testing", ""},
		{"unknown flag", []string{"agent", "-frobnicate"}, 2, "", "flag provided but not defined: -frobnicate\nRun 'aegis help agent' for usage."},
		{"bad serve", []string{"agent", "-serve", "nope"}, 2, "", `unknown kind "nope"`},
		{"bad key", []string{"agent", "-key", "!!!"}, 2, "", "-key: not valid base64"},
		{"load without service", []string{"load", "-join", "127.0.0.1:1"}, 2, "", "-service is required"},
		{"bad config value", []string{"agent", "-heartbeat-timeout", "1s"}, 2, "", "HeartbeatTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			status := run(tt.args, &stdout, &stderr)
			assert.Equal(t, tt.wantStatus, status, "stderr: %s", stderr.String())
			if tt.wantOut != "" {
				assert.Contains(t, stdout.String(), tt.wantOut)
			}
			if tt.wantErr != "" {
				assert.Contains(t, stderr.String(), tt.wantErr)
			} else {
				assert.Empty(t, strings.TrimSpace(stderr.String()))
			}
		})
	}
}
