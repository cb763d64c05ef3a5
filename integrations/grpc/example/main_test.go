package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestExample runs the example: a server killed mid-run costs no RPC.
func TestExample(t *testing.T) {
	require.NoError(t, run(4, 2500*time.Millisecond, time.Second))
}
