package cluster

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/events"
)

// peerIDs returns the ids of the replicas r sends to now, sorted.
func peerIDs(r *Relay) []string {
	var ids []string
	for _, p := range r.current() {
		ids = append(ids, p.id)
	}
	slices.Sort(ids)
	return ids
}

// TestRelaySendsToTheReplicasItSawLately checks whom the relay sends to: every replica with a heartbeat but
// itself, those heard from, each until peerLinger after it was last seen (a replica that left keeps hearing who
// took its tenants over while it drains), and nobody new once it stopped.
func TestRelaySendsToTheReplicasItSawLately(t *testing.T) {
	var (
		mu      sync.Mutex
		members = []string{"a", "b", "self"}
		now     = time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	)
	r := NewRelay(nil, nil, events.NewBus(), "x.events", "self", func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(members)
	}, prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"}), zap.NewNop())
	r.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration, m ...string) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
		if m != nil {
			members = m
		}
	}

	require.Equal(t, []string{"a", "b"}, peerIDs(r), "every replica with a heartbeat, not itself")
	r.mu.Lock()
	a, b := r.peers["a"], r.peers["b"]
	r.mu.Unlock()
	require.Equal(t, "x.events.a", a.queue, "sent to the replica's own queue")

	advance(time.Minute, "a", "self") // b left
	require.Equal(t, []string{"a", "b"}, peerIDs(r), "a replica that left still hears events for a while")
	r.heard("c") // cut off from PostgreSQL, but its events arrive
	require.Equal(t, []string{"a", "b", "c"}, peerIDs(r))

	advance(peerLinger - time.Minute + time.Second)
	require.Equal(t, []string{"a", "c"}, peerIDs(r), "b was last seen longer than peerLinger ago")
	select {
	case <-b.gone:
	default:
		t.Fatal("the sender of a replica forgotten was not stopped")
	}
	advance(peerLinger)
	require.Equal(t, []string{"a"}, peerIDs(r), "c was not heard from again")
	r.heard("c")
	require.Equal(t, []string{"a", "c"}, peerIDs(r))

	require.NoError(t, r.Stop(context.Background()))
	r.heard("d")
	advance(0, "a", "e", "self")
	require.Equal(t, []string{"a", "c"}, peerIDs(r), "no sender starts after Stop")
}
