package messaging

import (
	"testing"
	"time"
)

// TestRefillYieldsToABurstUntilThePoolRunsOut: while creations claim, the refill waits until the pool is empty;
// once claims stop for refillQuiet it refills whatever the pool holds.
func TestRefillYieldsToABurstUntilThePoolRunsOut(t *testing.T) {
	cases := []struct {
		name       string
		sinceClaim time.Duration
		ready      int64
		want       time.Duration
	}{
		{"a burst, a pool of 10,000 down to a tenth", 100 * time.Millisecond, 1000, refillQuiet - 100*time.Millisecond},
		{"a burst, more than a batch left", 0, 101, refillQuiet},
		{"a burst, a batch left", 0, 100, refillQuiet},
		{"a burst, one left", 0, 1, refillQuiet},
		{"a burst, the pool empty", 0, 0, 0},
		{"a burst, claims counted past the last count", 0, -5, 0},
		{"no claim for refillQuiet", refillQuiet, 9000, 0},
		{"never claimed", time.Since(time.Unix(0, 0)), 9000, 0},
	}
	for _, c := range cases {
		if got := refillYield(c.sinceClaim, c.ready); got != c.want {
			t.Errorf("%s: waits %v, want %v", c.name, got, c.want)
		}
	}
}
