package consumer

import (
	"context"
	"errors"
	"fmt"
	"testing"

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
