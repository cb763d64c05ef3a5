package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestOverheadRuns runs a tiny measurement, so the program keeps working.
func TestOverheadRuns(t *testing.T) {
	require.NoError(t, run(1, 64, 100*time.Millisecond, 2))
}
