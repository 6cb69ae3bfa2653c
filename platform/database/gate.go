package database

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/uptrace/bun"
	"go.uber.org/zap"
)

// GateOptions configure a Gate.
type GateOptions struct {
	// Probe asks the database whether it serves; nil means it always does.
	Probe func(ctx context.Context) error
	// ProbeTimeout bounds one probe (default 2 s).
	ProbeTimeout time.Duration
	// MinBackoff and MaxBackoff bound the waits between probes while the database does not answer (defaults
	// 100 ms and 1 s): the wait doubles after each failed probe, so the consumers resume within about
	// MaxBackoff of the database's return.
	MinBackoff, MaxBackoff time.Duration
	// MaxRelapse bounds the wait before the first probe of a closing (default 30 s). It starts at MinBackoff and
	// doubles each time the gate closes again after a probe had opened it and before any store succeeded, so a
	// database that answers probes but still fails stores (a full disk) is tried ever less often.
	MaxRelapse time.Duration
	// After waits; tests replace it (default time.After).
	After func(time.Duration) <-chan time.Time
	Log   *zap.Logger
}

// Gate is the service's one view of whether the database can be used. Workers that see a failure of the
// database (Classify returns Unavailable) report it with Fail: the gate closes and one goroutine probes the
// database, with capped exponential backoff, until it answers; then the gate opens. Workers wait for Ready
// before a store, so while the database is unusable nobody stores, nobody spends a retry budget, and one probe
// (not each worker) asks the database whether it is back.
//
// All methods may be called concurrently. A nil *Gate is always open.
type Gate struct {
	o GateOptions

	mu       sync.Mutex
	ready    chan struct{} // closed while the gate is open
	probing  bool
	relapse  time.Duration // the wait before a closing's first probe
	failures uint64
	closed   bool          // Close was called
	quit     chan struct{} // closed by Close
	done     sync.WaitGroup
}

// NewGate returns an open gate.
func NewGate(o GateOptions) *Gate {
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 2 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Second, o.MinBackoff)
	}
	if o.MaxRelapse < o.MinBackoff {
		o.MaxRelapse = max(30*time.Second, o.MinBackoff)
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Probe == nil {
		o.Probe = func(context.Context) error { return nil }
	}
	ready := make(chan struct{})
	close(ready)
	return &Gate{o: o, ready: ready, relapse: o.MinBackoff, quit: make(chan struct{})}
}

// ProbeDB returns a probe that asks db for one row with a writable primary's answer: a standby in recovery
// or a database made read-only serves SELECT but refuses every store, so it is unavailable too.
func ProbeDB(db *bun.DB) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		var recovery bool
		var readOnly string
		err := db.QueryRowContext(ctx, "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").Scan(&recovery, &readOnly)
		switch {
		case err != nil:
			return err
		case recovery:
			return errors.New("the database is in recovery (a standby)")
		case readOnly == "on":
			return errors.New("transactions are read-only")
		}
		return nil
	}
}

// Ready returns a channel that is closed while the gate is open; take it anew after each wait.
func (g *Gate) Ready() <-chan struct{} {
	if g == nil {
		return closedChan
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ready
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Available reports whether the gate is open.
func (g *Gate) Available() bool {
	select {
	case <-g.Ready():
		return true
	default:
		return false
	}
}

// Failures returns how many failures of the database were reported.
func (g *Gate) Failures() uint64 {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failures
}

// Fail reports a failure of the database (an Unavailable error): the gate closes, if open, and the probe starts.
func (g *Gate) Fail(err error) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.failures++
	if g.closed || g.probing {
		g.mu.Unlock()
		return
	}
	g.probing = true
	g.ready = make(chan struct{})
	g.done.Add(1)
	g.mu.Unlock()
	g.o.Log.Warn("database unavailable: consumers wait until it answers", zap.Error(err))
	go g.probe()
}

// Succeeded reports that a store succeeded: the next closing of the gate probes after MinBackoff again.
func (g *Gate) Succeeded() {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.probing {
		g.relapse = g.o.MinBackoff
	}
}

// Close stops the probe and opens the gate, so that nobody waits for it any more; it returns once the probe
// goroutine has ended.
func (g *Gate) Close() {
	if g == nil {
		return
	}
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		close(g.quit)
	}
	g.mu.Unlock()
	g.done.Wait()
}

// probe runs while the gate is closed: it waits the backoff, asks the database, and opens the gate when it
// answers.
func (g *Gate) probe() {
	defer g.done.Done()
	g.mu.Lock()
	wait := g.relapse
	g.mu.Unlock()
	for attempt := 1; ; attempt++ {
		select {
		case <-g.o.After(wait):
		case <-g.quit:
			g.open("service stopping", attempt)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), g.o.ProbeTimeout)
		err := g.o.Probe(ctx)
		cancel()
		if err == nil {
			g.open("the database answers", attempt)
			return
		}
		wait = min(wait*2, g.o.MaxBackoff)
		if attempt == 1 || attempt%10 == 0 {
			g.o.Log.Warn("database probe failed; probing again with backoff", zap.Int("attempt", attempt),
				zap.Duration("backoff", wait), zap.Error(fmt.Errorf("probe: %w", err)))
		}
	}
}

// open opens the gate; until a store succeeds, its next closing waits longer before its first probe.
func (g *Gate) open(why string, probes int) {
	g.mu.Lock()
	g.probing = false
	g.relapse = min(g.relapse*2, g.o.MaxRelapse)
	close(g.ready)
	g.mu.Unlock()
	g.o.Log.Info("database available again: consumers resume", zap.String("why", why), zap.Int("probes", probes))
}
