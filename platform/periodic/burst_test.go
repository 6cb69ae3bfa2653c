package periodic

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A yield waits for a pause in the marks, never longer than its limit, and ends early when asked to hurry or
// when its context ends; without a burst it does not wait.
func TestBurstYield(t *testing.T) {
	ctx := context.Background()
	var nilBurst *Burst
	nilBurst.Mark()
	require.False(t, nilBurst.Busy())
	require.Less(t, nilBurst.Yield(ctx, time.Minute, nil), 10*time.Millisecond, "a nil burst holds nothing back")

	var b Burst
	require.False(t, b.Busy(), "never marked")
	require.Less(t, b.Yield(ctx, time.Minute, nil), 10*time.Millisecond)

	b.Mark()
	require.True(t, b.Busy())
	waited := b.Yield(ctx, time.Minute, nil)
	require.GreaterOrEqual(t, waited, BurstQuiet-10*time.Millisecond, "until a second after the last mark")
	require.Less(t, waited, BurstQuiet+500*time.Millisecond)
	require.False(t, b.Busy())

	// Marks that go on: the yield ends at its limit.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				b.Mark()
			}
		}
	}()
	require.Eventually(t, b.Busy, time.Second, time.Millisecond)
	waited = b.Yield(ctx, 300*time.Millisecond, nil)
	require.GreaterOrEqual(t, waited, 300*time.Millisecond)
	require.Less(t, waited, 800*time.Millisecond, "the limit holds while the burst goes on")

	var hurry atomic.Bool
	time.AfterFunc(150*time.Millisecond, func() { hurry.Store(true) })
	waited = b.Yield(ctx, time.Minute, hurry.Load)
	require.Less(t, waited, 800*time.Millisecond, "hurry ends it within a step")

	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	waited = b.Yield(cctx, time.Minute, nil)
	require.Less(t, waited, 800*time.Millisecond, "the context's end ends it")
}
