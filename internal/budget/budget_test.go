package budget

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/clock"
)

func withdrawAll(b *Budget, tries int) int {
	n := 0
	for i := 0; i < tries; i++ {
		if b.Withdraw() {
			n++
		}
	}
	return n
}

func TestRatioOfCalls(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	b := New(0.2, 0, clk.Now)
	for i := 0; i < 100; i++ {
		b.Deposit()
	}
	require.Equal(t, 20, withdrawAll(b, 100), "20% of 100 calls")
	require.Equal(t, 0, withdrawAll(b, 10), "spent")
	for i := 0; i < 5; i++ {
		b.Deposit()
	}
	require.Equal(t, 1, withdrawAll(b, 10), "5 more calls earn one retry")
}

func TestFloorPerSecond(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	b := New(0.2, 5, clk.Now)
	require.Equal(t, 5, withdrawAll(b, 100), "only the floor without calls")
	clk.Advance(999 * time.Millisecond)
	require.Equal(t, 0, withdrawAll(b, 100), "same second")
	clk.Advance(time.Millisecond)
	require.Equal(t, 5, withdrawAll(b, 100), "a new second refills the floor")
	clk.Advance(10 * time.Second)
	require.Equal(t, 5, withdrawAll(b, 100), "the floor is not banked")
}

func TestCapacity(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	b := New(1, 0, clk.Now)
	for i := 0; i < 10_000; i++ {
		b.Deposit()
	}
	require.Equal(t, 100, withdrawAll(b, 10_000), "at most 100 retries banked")

	b = New(1, 50, clk.Now)
	for i := 0; i < 10_000; i++ {
		b.Deposit()
	}
	require.Equal(t, 500+50, withdrawAll(b, 10_000), "ten seconds of floor banked, plus this second's floor")
}

func TestZeroRatioZeroFloorNeverRetries(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	b := New(0, 0, clk.Now)
	for i := 0; i < 100; i++ {
		b.Deposit()
	}
	require.False(t, b.Withdraw())
}
