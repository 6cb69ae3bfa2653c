package messaging

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/periodic"
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

// sweepTimes is a tenant directory without tenants that records when each sweep began (its listing).
type sweepTimes struct {
	mu sync.Mutex
	at []time.Time
}

func (d *sweepTimes) Tenants(context.Context) ([]events.Tenant, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = append(d.at, time.Now())
	return nil, nil
}

func (d *sweepTimes) Tenant(context.Context, uuid.UUID) (events.Tenant, bool, error) {
	return events.Tenant{}, false, nil
}

// since returns how many sweeps began after t.
func (d *sweepTimes) since(t time.Time) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, at := range d.at {
		if at.After(t) {
			n++
		}
	}
	return n
}

// A sweep in its turn waits for a pause in a burst of tenant creations, for at most an interval, so that while
// creations go on a sweep comes every two intervals; a kick does not wait, and after the burst the turns come
// back.
func TestSweepsInTurnMakeWayForABurstOfCreations(t *testing.T) {
	const interval = 300 * time.Millisecond
	dir := &sweepTimes{}
	s := NewSweeper(nil, dir, func(uuid.UUID) bool { return true }, SweeperOptions{Interval: interval},
		NewRetentionMetrics(prometheus.NewRegistry(), false), zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx, interval) }()
	defer func() { cancel(); <-done }()

	create := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			s.Created()
		}
	}
	began := time.Now()
	create(2400 * time.Millisecond)
	n := dir.since(began)
	require.LessOrEqual(t, n, 5, "a sweep every two intervals while the creations go on (every interval: 8)")
	require.GreaterOrEqual(t, n, 2, "never more than two intervals without a sweep")

	kicked := time.Now()
	s.Kick()
	create(600 * time.Millisecond)
	require.GreaterOrEqual(t, dir.since(kicked), 1, "a kick does not wait for the burst to end")

	quiet := time.Now()
	time.Sleep(periodic.BurstQuiet + 3*interval)
	require.GreaterOrEqual(t, dir.since(quiet), 2, "after the burst, a sweep every interval")
}
