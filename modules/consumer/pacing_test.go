package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

// The pacer never lets more than its slots hold it at once, and a waiter gets a slot as soon as one is released.
func TestPacerBoundsStarts(t *testing.T) {
	p := newPacer(2, NewMetrics(prometheus.NewRegistry(), false))
	ctx := context.Background()
	require.NoError(t, p.acquire(ctx))
	require.NoError(t, p.acquire(ctx))

	blocked, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, p.acquire(blocked), context.Canceled, "a third start waits while two run")

	got := make(chan error, 1)
	go func() { got <- p.acquire(ctx) }()
	p.release()
	require.NoError(t, <-got, "a released slot goes to the waiting start")
	p.release()
	p.release()
	require.Empty(t, p.slots)
}

// Only the broker closing the connection in answer to the consumer's own command makes a tenant suspect; the
// connection dropping under it (an operator, a broker shutdown) and channel errors do not.
func TestClosedConnectionTellsTheConsumesOwnHardError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&amqp.Error{Code: amqp.InternalError, Reason: "INTERNAL_ERROR", Server: true}, true},
		{fmt.Errorf("declare qos failed: %w", &amqp.Error{Code: amqp.CommandInvalid, Server: true}), true},
		{&amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED", Server: true}, false},
		{&amqp.Error{Code: amqp.ResourceLocked, Reason: "RESOURCE_LOCKED", Server: true}, false},
		{&amqp.Error{Code: amqp.NotFound, Server: true}, false},
		{&amqp.Error{Code: amqp.InternalError}, false}, // raised by the client, not the broker
		{amqp.ErrClosed, false},
		{errors.New("dial tcp: connection refused"), false},
		{nil, false},
	} {
		require.Equal(t, c.want, closedConnection(c.err), "%v", c.err)
	}
}

// A pass's inspections in turn go inspectRate a second, faster when that would take more than half the
// interval.
func TestInspectEvery(t *testing.T) {
	require.Equal(t, 5*time.Millisecond, inspectEvery(100, 30*time.Second))
	require.Equal(t, 5*time.Millisecond, inspectEvery(3000, 30*time.Second), "15 s: half the interval")
	require.Equal(t, 2500*time.Microsecond, inspectEvery(6000, 30*time.Second))
	require.Equal(t, 500*time.Microsecond, inspectEvery(1000, time.Second))
}

// The pacer spaces the inspections by inspectEvery across the lanes calling it, a kick ends the pacing (the rest
// goes at once), and a cancelled pass stops waiting.
func TestInspectPacer(t *testing.T) {
	r := &Runtime{opts: Options{ReconcileInterval: 30 * time.Second}, kick: make(chan struct{}, 1)}
	pace := r.inspectPacer(100) // 5 ms apart
	began := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				require.NoError(t, pace(context.Background()))
			}
		}()
	}
	wg.Wait()
	require.GreaterOrEqual(t, time.Since(began), 19*5*time.Millisecond, "20 inspections over four lanes")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	slow := r.inspectPacer(1)
	require.NoError(t, slow(context.Background()))
	var err error
	for range 10 { // a call that comes when its slot is due does not wait, whatever ctx
		if err = slow(ctx); err != nil {
			break
		}
	}
	require.ErrorIs(t, err, context.Canceled)

	r.Kick()
	began = time.Now()
	for range 1000 {
		require.NoError(t, pace(context.Background()))
	}
	require.Less(t, time.Since(began), 2500*time.Millisecond, "after a kick nothing waits (paced: 5 s)")
}

// A pass's inspections in turn make way for a burst of tenant creations, for at most an interval over the pass; a
// kick ends the wait.
func TestInspectPacerMakesWayForCreations(t *testing.T) {
	r := &Runtime{opts: Options{ReconcileInterval: 400 * time.Millisecond}, kick: make(chan struct{}, 1)}
	stop := make(chan struct{})
	defer close(stop)
	go func() { // creations every 20 ms
		for {
			r.creations.Mark()
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	require.Eventually(t, r.creations.Busy, time.Second, time.Millisecond)
	pace := r.inspectPacer(1)
	began := time.Now()
	require.NoError(t, pace(context.Background()))
	waited := time.Since(began)
	require.GreaterOrEqual(t, waited, 400*time.Millisecond, "the inspection waited for the burst")
	require.Less(t, waited, 1500*time.Millisecond, "for at most an interval")
	began = time.Now()
	for range 10 {
		require.NoError(t, pace(context.Background()))
	}
	require.Less(t, time.Since(began), 300*time.Millisecond, "the pass's wait is spent: the pace alone (5 ms)")

	r.opts.ReconcileInterval = time.Minute
	pace = r.inspectPacer(1)
	time.AfterFunc(100*time.Millisecond, r.Kick)
	began = time.Now()
	require.NoError(t, pace(context.Background()))
	require.Less(t, time.Since(began), 2*time.Second, "a kick ends the wait (a minute otherwise)")
}
