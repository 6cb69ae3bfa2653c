package messaging

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/events"
)

func TestShareDividesTheLimitByDemand(t *testing.T) {
	require.Equal(t, 1.0, share(0, 0), "no demand anywhere: the whole limit")
	require.Equal(t, 1.0, share(20, 0), "demand only here (alone, or the relay down): the whole limit")
	require.Equal(t, shareFloor, share(0, 20), "no demand here while others have some: the floor")
	require.Equal(t, 0.5, share(20, 20), "even split")
	require.InDelta(t, 0.25, share(10, 30), 1e-9)
	// Replicas computing from the same reports take shares that add up to the whole limit.
	d := []float64{3, 7, 12, 0.5}
	var sum, total float64
	for _, x := range d {
		total += x
	}
	for _, x := range d {
		sum += share(x, total-x)
	}
	require.InDelta(t, 1.0, sum, 1e-9)
}

// exchangeViews runs one exchange period on every view at now: each closes its period, and hears the others'
// reports.
func exchangeViews(now time.Time, vs ...*view) {
	reports := make([]events.TenantDemand, len(vs))
	for i, v := range vs {
		reports[i] = v.exchange(now)
	}
	for i, v := range vs {
		for j, r := range reports {
			if i != j && len(r.Demand) > 0 {
				v.heard(r, now)
			}
		}
	}
}

// offer offers n single messages to v for id at now and returns how many were accepted.
func offer(v *view, id uuid.UUID, n int, now time.Time) int {
	accepted := 0
	for range n {
		if wait, ok := v.allow(id, 1, now); ok && wait == 0 {
			accepted++
		}
	}
	return accepted
}

func TestExchangeHoldsTheLimitForTheCluster(t *testing.T) {
	limit := 20.0
	id := uuid.New()
	newReplica := func(name string) *view {
		v := newView(0)
		v.self, v.period = name, time.Second
		v.add(events.Tenant{ID: id, RateLimit: &limit})
		return v
	}
	a, b := newReplica("a"), newReplica("b")
	start := time.Now()
	a.lastExchange, b.lastExchange = start, start

	// Even split: 40 messages a second offered to each, over 10 periods after one of warm-up.
	var accepted int
	for s := range 11 {
		at := start.Add(time.Duration(s) * time.Second)
		for i := range 40 {
			ti := at.Add(time.Duration(i) * time.Second / 40)
			na, nb := offer(a, id, 1, ti), offer(b, id, 1, ti)
			if s > 0 {
				accepted += na + nb
			}
		}
		exchangeViews(at.Add(time.Second), a, b)
	}
	require.LessOrEqual(t, float64(accepted), 1.1*limit*10, "even split: at most about the limit")
	require.GreaterOrEqual(t, float64(accepted), 0.9*limit*10, "even split: about the limit")

	// Then all of it to a: within two periods it has about the whole limit again.
	start = start.Add(11 * time.Second)
	accepted = 0
	for s := range 12 {
		at := start.Add(time.Duration(s) * time.Second)
		for i := range 40 {
			n := offer(a, id, 1, at.Add(time.Duration(i)*time.Second/40))
			if s >= 2 {
				accepted += n
			}
		}
		exchangeViews(at.Add(time.Second), a, b)
	}
	require.GreaterOrEqual(t, float64(accepted), 0.95*limit*10, "all to one replica: about the whole limit")

	// A changed limit applies at once, already divided.
	require.Equal(t, 1.0, a.tenants[id].share)
	a.offered(id, 40)
	b.offered(id, 40)
	exchangeViews(start.Add(13*time.Second), a, b)
	require.InDelta(t, 0.5, a.tenants[id].share, 0.01)
	ten := 10.0
	a.setLimit(id, &ten)
	require.InDelta(t, 5.0, float64(a.tenants[id].limiter.Limit()), 0.1)

	// A report that is no longer current counts no more: alone again, a takes the whole limit.
	a.exchange(start.Add(20 * time.Second))
	require.Equal(t, 1.0, a.tenants[id].share)
}

// offered records n messages offered to v for id without taking tokens.
func (v *view) offered(id uuid.UUID, n int64) { v.tenants[id].offered.Add(n) }

func TestABatchOverThisReplicasShareWaitsButOneOverTheLimitIsRefused(t *testing.T) {
	limit := 10.0
	id := uuid.New()
	v := newView(0)
	v.self, v.period = "a", time.Second
	v.add(events.Tenant{ID: id, RateLimit: &limit})
	v.heard(events.TenantDemand{Replica: "b", Period: time.Second, Demand: map[uuid.UUID]float64{id: 100}}, time.Now())
	now := time.Now()
	v.exchange(now) // no demand here: the floor, a bucket of one
	require.Equal(t, shareFloor, v.tenants[id].share)
	wait, ok := v.allow(id, 5, now)
	require.True(t, ok, "within the tenant's burst")
	require.Positive(t, wait)
	_, ok = v.allow(id, 11, now)
	require.False(t, ok, "over the tenant's burst: waiting cannot help")
}
