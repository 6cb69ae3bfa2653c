package cluster_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/migrations"
	"github.com/acme/msgsvc/platform/cluster"
	"github.com/acme/msgsvc/platform/database"
	"github.com/acme/msgsvc/test/testenv"
)

// views records, for one Membership, whether it held its lease and the live set each time it reported a change.
type views struct {
	m  *cluster.Membership
	mu sync.Mutex
	// seen are the live sets reported while the lease was held, from the moment recording began.
	seen      [][]string
	recording bool
	changed   chan struct{}
}

func watch(m *cluster.Membership) *views {
	v := &views{m: m, changed: make(chan struct{}, 1)}
	m.OnChange(func() {
		v.mu.Lock()
		if v.recording && m.Holds() {
			v.seen = append(v.seen, m.Live())
		}
		v.mu.Unlock()
		select {
		case v.changed <- struct{}{}:
		default:
		}
	})
	return v
}

// await waits, on the membership's change signal, until cond holds, for at most timeout.
func (v *views) await(t *testing.T, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-v.changed:
		case <-deadline:
			t.Fatalf("after %s: %s (live %v, holds %v)", timeout, msg, v.m.Live(), v.m.Holds())
		}
	}
}

// TestDatabaseOutageLeavesNoReplicaAlone runs two memberships on a real PostgreSQL and makes every heartbeat fail
// for longer than the TTL (the replicas table locked). Both lose their lease, so both own nothing. When the
// table is free again, neither acts on a live set without the other: the first heartbeat back still counts the
// replica that has not renewed yet, so there is no moment at which one replica owns every tenant.
func TestDatabaseOutageLeavesNoReplicaAlone(t *testing.T) {
	s := testenv.Get(t)
	ctx := context.Background()
	dbURL := s.NewDatabase(t)
	db, err := database.Open(database.Options{URL: dbURL, MaxOpenConns: 2, MaxIdleConns: 2, ConnMaxLifetime: time.Minute})
	require.NoError(t, err)
	defer db.Close()
	_, err = database.Migrate(ctx, db, migrations.FS, zap.NewNop())
	require.NoError(t, err)

	const interval, ttl = 200 * time.Millisecond, 2 * time.Second
	start := func(self string) *views {
		beats, err := cluster.NewHeartbeats(dbURL)
		require.NoError(t, err)
		m := cluster.NewMembership(beats, nil, cluster.MembershipOptions{Self: self, Interval: interval, TTL: ttl,
			Margin: time.Second}, zap.NewNop())
		v := watch(m)
		require.NoError(t, m.Start(ctx))
		t.Cleanup(func() { _ = m.Leave(context.Background()) })
		return v
	}
	a, b := start("replica-a"), start("replica-b")
	both := []string{"replica-a", "replica-b"}
	for _, v := range []*views{a, b} {
		v.await(t, 5*time.Second, func() bool { return v.m.Holds() && slices.Equal(v.m.Live(), both) }, "the replicas do not see each other")
	}

	lock, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer lock.Close(ctx)
	tx, err := lock.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "LOCK TABLE replicas IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)
	locked := time.Now()
	for _, v := range []*views{a, b} {
		v.await(t, ttl+time.Second, func() bool { return !v.m.Holds() }, "the lease outlived the heartbeats")
	}
	// The outage lasts until every heartbeat row is older than the TTL: the database then names no replica live.
	time.Sleep(time.Until(locked.Add(ttl + 2*interval)))
	for _, v := range []*views{a, b} {
		v.mu.Lock()
		v.recording = true
		v.mu.Unlock()
	}
	require.NoError(t, tx.Rollback(ctx))

	for _, v := range []*views{a, b} {
		v.await(t, 5*time.Second, func() bool { return v.m.Holds() && slices.Equal(v.m.Live(), both) }, "the replicas do not come back")
	}
	for _, v := range []*views{a, b} {
		v.mu.Lock()
		for _, live := range v.seen {
			require.Equal(t, both, live, "%s acted on a smaller live set after the outage: %v", v.m.Self(), v.seen)
		}
		v.mu.Unlock()
	}
}
