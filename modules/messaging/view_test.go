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

func TestRefreshCatchesUpWithoutUndoingNewerEvents(t *testing.T) {
	v := newView(0)
	kept, gone, limited, createdDuring, deletedDuring := uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New()
	one := 1.0
	v.replace([]events.Tenant{{ID: kept}, {ID: gone}, {ID: limited}, {ID: deletedDuring}})
	e := v.tenants[kept]

	readAt := time.Now()
	// Events that arrive while the database is read are newer than the read.
	v.add(events.Tenant{ID: createdDuring})
	v.remove(deletedDuring)
	// What the read saw: gone was deleted and limited got a limit without this replica hearing of either, a
	// tenant was created elsewhere, and the read still saw deletedDuring but not createdDuring.
	elsewhere := uuid.New()
	v.refresh([]events.Tenant{{ID: kept}, {ID: limited, RateLimit: &one}, {ID: elsewhere}, {ID: deletedDuring}}, readAt)

	require.True(t, v.has(kept))
	require.Same(t, e, v.tenants[kept], "an unchanged tenant keeps its limiter")
	require.False(t, v.has(gone), "a tenant deleted elsewhere leaves the view")
	require.True(t, v.has(elsewhere), "a tenant created elsewhere joins the view")
	require.True(t, v.has(createdDuring), "a tenant created after the read began stays")
	require.False(t, v.has(deletedDuring), "a tenant deleted after the read began does not come back")
	_, ok := v.allow(limited, 1, time.Now())
	require.True(t, ok)
	wait, _ := v.allow(limited, 1, time.Now())
	require.Positive(t, wait, "the rate limit set elsewhere applies")

	// The next read sees everything; the events' marks are gone.
	v.refresh([]events.Tenant{{ID: kept}, {ID: limited, RateLimit: &one}, {ID: elsewhere}, {ID: createdDuring}}, time.Now())
	require.True(t, v.has(createdDuring))
	require.Empty(t, v.changed)
}
