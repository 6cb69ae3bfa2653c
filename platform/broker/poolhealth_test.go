package broker

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestPoolHealthIsDownFromTheFirstSweepThatFoundAConnectionClosed(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)}
	closed := false
	h := newPoolHealth(func() bool { return closed }, 250*time.Millisecond, clock.Now)
	h.sweep()
	_, down := h.Down()
	require.False(t, down)

	closed = true
	clock.Add(time.Second)
	lost := clock.Now()
	h.sweep()
	clock.Add(time.Second)
	h.sweep()
	since, down := h.Down()
	require.True(t, down)
	require.Equal(t, lost, since, "down since the first sweep that saw it")

	closed = false
	h.sweep()
	_, down = h.Down()
	require.False(t, down, "up again once every connection is open")
}

// TestPoolHealthCountsASweepStuckInAReconnectAsDown: a sweep dials itself after a failed dial, and a dial may
// hang; a sweep that has not returned within stuckAfter means the connections are not up, since the sweep began,
// and Down never waits for it.
func TestPoolHealthCountsASweepStuckInAReconnectAsDown(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)}
	entered, release := make(chan struct{}), make(chan struct{})
	h := newPoolHealth(func() bool { close(entered); <-release; return false }, 250*time.Millisecond, clock.Now)
	began := clock.Now()
	swept := make(chan struct{})
	go func() { h.sweep(); close(swept) }()
	<-entered

	clock.Add(h.stuckAfter - time.Millisecond)
	_, down := h.Down()
	require.False(t, down, "a sweep in progress is not down yet")
	clock.Add(time.Millisecond)
	since, down := h.Down()
	require.True(t, down)
	require.Equal(t, began, since)

	close(release)
	<-swept
	_, down = h.Down()
	require.False(t, down, "the dial ended and the connection is open")
}
