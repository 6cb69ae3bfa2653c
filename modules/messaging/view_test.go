package messaging

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/events"
)

func TestRateLimitTokenBucket(t *testing.T) {
	v := newView(0)
	unlimited, limited, zero := uuid.New(), uuid.New(), uuid.New()
	two, none := 2.0, 0.0
	v.replace([]events.Tenant{{ID: unlimited}, {ID: limited, RateLimit: &two}, {ID: zero, RateLimit: &none}})
	now := time.Now()

	for range 100 {
		wait, ok := v.allow(unlimited, 10, now)
		require.True(t, ok)
		require.Zero(t, wait)
		wait, ok = v.allow(zero, 10, now)
		require.True(t, ok)
		require.Zero(t, wait)
	}
	// A burst of two, then wait about half a second per message.
	for range 2 {
		wait, ok := v.allow(limited, 1, now)
		require.True(t, ok)
		require.Zero(t, wait)
	}
	wait, ok := v.allow(limited, 1, now)
	require.True(t, ok)
	require.InDelta(t, 500*time.Millisecond, wait, float64(50*time.Millisecond))
	// A refused attempt takes no token: after the wait, it is allowed.
	wait, ok = v.allow(limited, 1, now.Add(wait))
	require.True(t, ok)
	require.Zero(t, wait)
	// More than the burst at once can never pass.
	_, ok = v.allow(limited, 3, now.Add(time.Hour))
	require.False(t, ok)

	// The default applies to tenants without their own limit, and a change takes effect.
	d := newView(1)
	id := uuid.New()
	d.add(events.Tenant{ID: id})
	_, _ = d.allow(id, 1, now)
	wait, _ = d.allow(id, 1, now)
	require.Positive(t, wait)
	d.setLimit(id, &none)
	wait, ok = d.allow(id, 1000, now)
	require.True(t, ok)
	require.Zero(t, wait)
}
