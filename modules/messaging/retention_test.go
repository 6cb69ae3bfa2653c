package messaging

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A sweep's size reads go sizeReadChunk a statement at sizeReadRate a second, or faster so as to end within half of
// RETENTION_INTERVAL.
func TestSizeReadEvery(t *testing.T) {
	require.Equal(t, 500*time.Millisecond, sizeReadEvery(1000, time.Minute), "5 s for a thousand")
	require.Equal(t, 500*time.Millisecond, sizeReadEvery(6000, time.Minute), "30 s: half the interval")
	require.Equal(t, 250*time.Millisecond, sizeReadEvery(12000, time.Minute))
	require.Equal(t, 500*time.Millisecond, sizeReadEvery(100000, 0), "no interval: sizeReadRate")
	require.Equal(t, 50*time.Millisecond, sizeReadEvery(200, 200*time.Millisecond))
}

// sleepCtx waits its time, or returns at once with the error of a context that ends.
func TestSleepCtx(t *testing.T) {
	began := time.Now()
	require.NoError(t, sleepCtx(context.Background(), 20*time.Millisecond))
	require.GreaterOrEqual(t, time.Since(began), 20*time.Millisecond)
	require.NoError(t, sleepCtx(context.Background(), -time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	began = time.Now()
	require.ErrorIs(t, sleepCtx(ctx, time.Hour), context.Canceled)
	require.Less(t, time.Since(began), time.Second)
}
