package clock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func fired(c <-chan time.Time) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestFakeTimerFiresOnceAtItsTime(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	tm := f.NewTimer(time.Second)
	f.Advance(999 * time.Millisecond)
	require.False(t, fired(tm.C()))
	f.Advance(time.Millisecond)
	require.True(t, fired(tm.C()))
	f.Advance(time.Hour)
	require.False(t, fired(tm.C()), "a timer fires once")
}

func TestFakeTimerResetAndStop(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	tm := f.NewTimer(time.Second)
	f.Advance(time.Second)
	tm.Reset(2 * time.Second) // drops the unreceived tick
	require.False(t, fired(tm.C()))
	f.Advance(time.Second)
	require.False(t, fired(tm.C()))
	f.Advance(time.Second)
	require.True(t, fired(tm.C()))

	tm.Reset(time.Second)
	tm.Stop()
	f.Advance(time.Minute)
	require.False(t, fired(tm.C()), "a stopped timer never fires")
}

func TestFakeTicker(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	tk := f.NewTicker(time.Second)
	f.Advance(3 * time.Second)
	require.True(t, fired(tk.C()))
	require.False(t, fired(tk.C()), "ticks that find the channel full are dropped")
	tk.Stop()
	f.Advance(3 * time.Second)
	require.False(t, fired(tk.C()))
}
