package messaging

import (
	"testing"
	"time"
)

// TestRefillYieldsToABurstUntilThePoolRunsOut: while creations claim, the refill waits until the pool is empty;
// once claims stop for periodic.BurstQuiet it refills whatever the pool holds.
func TestRefillYieldsToABurstUntilThePoolRunsOut(t *testing.T) {
	cases := []struct {
		name    string
		quietIn time.Duration // until the burst of claims ends
		ready   int64
		want    time.Duration
	}{
		{"a burst, a pool of 10,000 down to a tenth", 900 * time.Millisecond, 1000, 900 * time.Millisecond},
		{"a burst, more than a batch left", time.Second, 101, time.Second},
		{"a burst, a batch left", time.Second, 100, time.Second},
		{"a burst, one left", time.Second, 1, time.Second},
		{"a burst, the pool empty", time.Second, 0, 0},
		{"a burst, claims counted past the last count", time.Second, -5, 0},
		{"no claim for a second", 0, 9000, 0},
		{"never claimed", -time.Since(time.Unix(0, 0)), 9000, 0},
	}
	for _, c := range cases {
		if got := refillYield(c.quietIn, c.ready); got != c.want {
			t.Errorf("%s: waits %v, want %v", c.name, got, c.want)
		}
	}
}
