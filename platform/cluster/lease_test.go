package cluster

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const (
	testTTL    = 20 * time.Second
	testMargin = 12 * time.Second // drain 10 s + interval 2 s
)

var t0 = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func TestLeaseIsHeldForTTLLessMarginAfterTheHeartbeatWasSent(t *testing.T) {
	l := newLease(testTTL, testMargin, t0)
	require.False(t, l.held(t0), "no lease before the first heartbeat")
	l.renew(at(time.Second))
	require.True(t, l.held(at(time.Second)))
	require.True(t, l.held(at(time.Second+testTTL-testMargin-time.Nanosecond)))
	require.False(t, l.held(at(time.Second+testTTL-testMargin)), "held when the others may take over in less than the margin")
	require.Equal(t, at(time.Second+testTTL-testMargin), l.expiry())

	l.renew(at(3 * time.Second))
	require.True(t, l.held(at(time.Second+testTTL-testMargin)), "a renewal extends the lease")
}

func TestLeaseWindowIsTheTTLWhileRenewedInTime(t *testing.T) {
	l := newLease(testTTL, testMargin, t0)
	require.Equal(t, testTTL, l.window(t0), "a first heartbeat at start reads one TTL")
	l.renew(t0)
	for i := 1; i <= 5; i++ {
		sent := at(time.Duration(i) * 2 * time.Second)
		require.Equal(t, testTTL, l.window(sent))
		l.renew(sent)
		require.False(t, l.holding(sent), "no hold without a lapse")
	}
}

// TestLeaseRenewedAfterALapseHoldsTheOldSetForOneTTL is the end of a database outage: the heartbeat that renews
// the lapsed lease, and every one for a TTL after it, counts the replicas that heartbeated up to TTL before the
// last renewal before the outage; after that TTL the window is the TTL again.
func TestLeaseRenewedAfterALapseHoldsTheOldSetForOneTTL(t *testing.T) {
	l := newLease(testTTL, testMargin, t0)
	l.renew(t0)
	back := at(45 * time.Second) // heartbeats failed from 2 s to 45 s
	require.False(t, l.held(back))
	require.True(t, l.lapsed(back))
	cutoff := t0.Add(-testTTL)
	require.Equal(t, back.Sub(cutoff), l.window(back), "the renewing heartbeat reaches back to TTL before the last renewal")
	l.renew(back)
	require.True(t, l.held(back))
	require.True(t, l.holding(back))

	for d := 2 * time.Second; d < testTTL; d += 2 * time.Second {
		next := back.Add(d)
		require.Equal(t, next.Sub(cutoff), l.window(next), "the hold keeps the cutoff")
		l.renew(next)
	}
	after := back.Add(testTTL)
	require.False(t, l.holding(after))
	require.Equal(t, testTTL, l.window(after), "after one TTL, a replica that did not heartbeat is gone")
}

func TestLeaseLapsingAgainDuringAHoldKeepsTheEarlierCutoff(t *testing.T) {
	l := newLease(testTTL, testMargin, t0)
	l.renew(t0)
	back := at(40 * time.Second)
	l.renew(back)
	again := back.Add(9 * time.Second) // the lease lapsed at back+8s
	require.True(t, l.lapsed(again))
	require.Equal(t, again.Sub(t0.Add(-testTTL)), l.window(again))
	l.renew(again)
	require.True(t, l.holding(again.Add(testTTL-time.Nanosecond)), "a new hold starts at the new renewal")
	require.Equal(t, t0.Add(-testTTL), l.holdCutoff)
}

func TestLeaseFirstHeartbeatsFailingAtStartHoldFromTheStart(t *testing.T) {
	l := newLease(testTTL, testMargin, t0)
	back := at(30 * time.Second)
	require.True(t, l.lapsed(back), "the database answered only long after the start")
	require.Equal(t, back.Sub(t0.Add(-testTTL)), l.window(back))
	l.renew(back)
	require.True(t, l.holding(back))

	quick := newLease(testTTL, testMargin, t0)
	require.False(t, quick.lapsed(at(3*time.Second)), "a first heartbeat soon after the start is no recovery")
	quick.renew(at(3 * time.Second))
	require.False(t, quick.holding(at(3*time.Second)))
}

func TestLeaseSurrenderedOwnsNothingAndHoldsOnRenewal(t *testing.T) {
	l := newLease(testTTL, testMargin, t0)
	l.renew(t0)
	l.surrender()
	require.False(t, l.held(at(time.Second)), "a surrendered lease is not held before its expiry")
	require.True(t, l.lapsed(at(time.Second)))
	l.renew(at(4 * time.Second))
	require.True(t, l.held(at(4*time.Second)))
	require.True(t, l.holding(at(4*time.Second)), "the others may have stopped heartbeating in the same broker outage")
}

// TestMembershipWithoutLeaseOwnsNothingAndTellsSubscribers drives a Membership's lease with an injected clock:
// once the lease runs out, Owns is false for every tenant and the subscribers hear of it; a renewal gives the
// tenants back and tells them again.
func TestMembershipWithoutLeaseOwnsNothingAndTellsSubscribers(t *testing.T) {
	now := t0
	m := newMembership(nil, nil, MembershipOptions{Self: "a", Interval: 2 * time.Second, TTL: testTTL, Margin: testMargin},
		zap.NewNop(), func() time.Time { return now })
	changed := make(chan struct{}, 10)
	m.OnChange(func() { changed <- struct{}{} })
	renew := func(live ...string) {
		m.mu.Lock()
		m.lease.renew(now)
		m.live = live
		m.mu.Unlock()
		m.settle()
	}
	keys := make([]uuid.UUID, 64)
	for i := range keys {
		keys[i] = uuid.New()
	}
	owned := func() (n int) {
		for _, k := range keys {
			if m.Owns(k) {
				n++
			}
		}
		return n
	}

	require.Zero(t, owned(), "nothing is owned before the first heartbeat")
	renew("a", "b")
	<-changed
	require.Positive(t, owned())
	require.Less(t, owned(), len(keys), "b owns a share")
	require.Equal(t, []string{"a", "b"}, m.Live())

	now = now.Add(testTTL - testMargin)
	m.settle()
	<-changed
	require.Zero(t, owned(), "the lease ran out")
	require.Equal(t, []string{"b"}, m.Live())
	for _, k := range keys {
		require.Equal(t, "b", m.Owner(k), "placed on the replicas that still hold theirs")
	}
	m.settle()
	require.Empty(t, changed, "told once")

	renew("a", "b")
	<-changed
	require.Positive(t, owned())
}

// The lease margin is kept whole whenever the lease still lasts two heartbeats (the defaults: TTL 20 s, margin
// 12 s, heartbeat 2 s), with no warning; only a margin that leaves less than that (a TTL the configuration refuses)
// is cut to TTL/2, with a warning.
func TestTheLeaseMarginIsCutOnlyWhenTheLeaseWouldNotLastTwoHeartbeats(t *testing.T) {
	for _, tc := range []struct {
		ttl, margin, want time.Duration
		warned            bool
	}{
		{ttl: 20 * time.Second, margin: 12 * time.Second, want: 12 * time.Second},
		{ttl: 16 * time.Second, margin: 12 * time.Second, want: 12 * time.Second},
		{ttl: 14 * time.Second, margin: 12 * time.Second, want: 7 * time.Second, warned: true},
	} {
		core, logs := observer.New(zap.WarnLevel)
		m := NewMembership(nil, nil, MembershipOptions{Self: "a", Interval: 2 * time.Second, TTL: tc.ttl, Margin: tc.margin},
			zap.New(core))
		require.Equal(t, tc.want, m.opts.Margin, "TTL %s, margin %s", tc.ttl, tc.margin)
		require.Equal(t, tc.warned, logs.Len() > 0, "TTL %s, margin %s: warned", tc.ttl, tc.margin)
	}
}
