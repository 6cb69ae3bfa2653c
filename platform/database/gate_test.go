package database

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeGate is a gate whose waits and probes the test drives: each wait asks for a tick on waits (and tells its
// length), each probe asks for an answer on probes.
type fakeGate struct {
	*Gate
	waits  chan time.Duration
	ticks  chan time.Time
	probes chan chan error
}

func newFakeGate(t *testing.T) *fakeGate {
	f := &fakeGate{waits: make(chan time.Duration, 100), ticks: make(chan time.Time), probes: make(chan chan error)}
	f.Gate = NewGate(GateOptions{MinBackoff: time.Second, MaxBackoff: 4 * time.Second, MaxRelapse: 16 * time.Second,
		After: func(d time.Duration) <-chan time.Time { f.waits <- d; return f.ticks },
		Probe: func(ctx context.Context) error {
			answer := make(chan error)
			f.probes <- answer
			return <-answer
		}})
	t.Cleanup(f.Close)
	return f
}

// probe lets the next wait pass and answers the probe that follows with err.
func (f *fakeGate) probe(t *testing.T, wantWait time.Duration, err error) {
	t.Helper()
	require.Equal(t, wantWait, <-f.waits)
	f.ticks <- time.Now()
	(<-f.probes) <- err
}

func closedNow(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestGateOneProbeForManyFailures(t *testing.T) {
	f := newFakeGate(t)
	require.True(t, f.Available())
	var nilGate *Gate
	require.True(t, nilGate.Available(), "a nil gate is open")

	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); f.Fail(errors.New("connection refused")) }()
	}
	wg.Wait()
	require.False(t, f.Available())
	require.EqualValues(t, 50, f.Failures())
	ready := f.Ready()

	// One probe goroutine: one wait at a time, its backoff doubling up to the cap while the database is down.
	f.probe(t, time.Second, errors.New("still down"))
	f.probe(t, 2*time.Second, errors.New("still down"))
	f.probe(t, 4*time.Second, errors.New("still down"))
	require.False(t, closedNow(ready), "opened while the probe fails")
	f.probe(t, 4*time.Second, nil)
	<-ready
	require.True(t, f.Available())
	require.Empty(t, f.waits, "a second probe loop ran")
}

func TestGateBackoffKeepsGrowingUntilAStoreSucceeds(t *testing.T) {
	f := newFakeGate(t)
	// The probe answers, but stores keep failing (a full disk): each closing waits longer.
	f.Fail(errors.New("disk full"))
	f.probe(t, time.Second, nil)
	<-f.Ready()
	f.Fail(errors.New("disk full"))
	f.probe(t, 2*time.Second, nil)
	<-f.Ready()
	f.Fail(errors.New("disk full"))
	f.probe(t, 4*time.Second, nil)
	<-f.Ready()
	f.Fail(errors.New("disk full"))
	f.probe(t, 8*time.Second, nil)
	<-f.Ready()
	// Past MaxBackoff, but once the database stops answering the probes come at most MaxBackoff apart.
	f.Fail(errors.New("disk full"))
	f.probe(t, 16*time.Second, errors.New("down now"))
	f.probe(t, 4*time.Second, nil)
	<-f.Ready()
	// A store succeeded: the next outage is noticed fast again.
	f.Succeeded()
	f.Fail(errors.New("connection refused"))
	f.probe(t, time.Second, nil)
	<-f.Ready()
}

func TestGateCloseOpensItForWaiters(t *testing.T) {
	f := newFakeGate(t)
	f.Fail(errors.New("connection refused"))
	ready := f.Ready()
	<-f.waits // the probe waits its backoff
	closed := make(chan struct{})
	go func() { f.Close(); close(closed) }()
	<-ready // a waiting worker is let go
	<-closed
	f.Fail(errors.New("after close"))
	require.True(t, f.Available(), "a closed gate starts no probe")
}
