package events

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

type ping struct{ n int }
type pong struct{}

func TestDeliveredInRegistrationOrder(t *testing.T) {
	bus := NewBus()
	var got []string
	Subscribe(bus, "a", func(_ context.Context, p ping) error { got = append(got, "a"); return nil })
	Subscribe(bus, "b", func(_ context.Context, p ping) error { got = append(got, "b"); return nil })
	Subscribe(bus, "other", func(_ context.Context, _ pong) error { got = append(got, "pong"); return nil })
	require.NoError(t, Publish(context.Background(), bus, ping{1}))
	require.Equal(t, []string{"a", "b"}, got)
}

func TestFirstErrorStopsDeliveryAndReachesPublisher(t *testing.T) {
	bus := NewBus()
	boom := errors.New("boom")
	var later bool
	Subscribe(bus, "failing", func(context.Context, ping) error { return boom })
	Subscribe(bus, "later", func(context.Context, ping) error { later = true; return nil })
	err := Publish(context.Background(), bus, ping{})
	require.ErrorIs(t, err, boom)
	require.Contains(t, err.Error(), "failing")
	require.False(t, later)
}

func TestNoSubscriberIsFine(t *testing.T) {
	require.NoError(t, Publish(context.Background(), NewBus(), pong{}))
}

func TestRemoteMark(t *testing.T) {
	ctx := context.Background()
	require.False(t, IsRemote(ctx))
	require.True(t, IsRemote(WithRemote(ctx, "replica-2")))
}
