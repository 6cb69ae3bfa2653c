package periodic

import (
	"context"
	"sync/atomic"
	"time"
)

// Burst records foreground work that background loops make way for: tenant creations. On a box the creations
// keep busy, a reconciliation pass or a retention sweep that takes its share of the CPU at once slows the
// creations of that moment (by a fifth, with 10,000 tenants on two cores); a loop that yields waits for a pause
// in them, for a bounded time. The zero Burst is ready; a nil one never holds anything back.
type Burst struct{ last atomic.Int64 } // unix nanoseconds of the last Mark; 0: never

// BurstQuiet is how long a burst lasts after its last Mark.
const BurstQuiet = time.Second

// yieldStep is how long a yield sleeps at most before it checks again whether to end.
const yieldStep = 100 * time.Millisecond

// Mark records foreground work now.
func (b *Burst) Mark() { b.MarkAt(time.Now()) }

// MarkAt records foreground work at t: a Mark at a time in the past (tests set a burst that ended that way).
func (b *Burst) MarkAt(t time.Time) {
	if b != nil {
		b.last.Store(t.UnixNano())
	}
}

// Busy reports whether a burst goes on: a Mark within BurstQuiet.
func (b *Burst) Busy() bool { return b.QuietIn() > 0 }

// QuietIn is how long until the burst ends (<= 0: none goes on).
func (b *Burst) QuietIn() time.Duration {
	if b == nil {
		return 0
	}
	last := b.last.Load()
	if last == 0 {
		return 0
	}
	return BurstQuiet - time.Since(time.Unix(0, last))
}

// Yield waits while a burst goes on, for at most limit, and returns how long it waited. It ends early when ctx
// ends or hurry (nil: never) reports true, checked at least every yieldStep.
func (b *Burst) Yield(ctx context.Context, limit time.Duration, hurry func() bool) time.Duration {
	began := time.Now()
	for {
		quiet, left := b.QuietIn(), limit-time.Since(began)
		if quiet <= 0 || left <= 0 || ctx.Err() != nil || (hurry != nil && hurry()) {
			return time.Since(began)
		}
		t := time.NewTimer(min(quiet, left, yieldStep))
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}
