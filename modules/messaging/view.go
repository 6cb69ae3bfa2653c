package messaging

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/acme/msgsvc/platform/events"
)

// view is the in-memory set of existing tenants that publishing checks instead of querying per message, with
// each tenant's publish rate limiter. The tenant events keep it fresh on every replica; a miss falls back to
// the database once.
//
// A tenant's limit holds for the cluster: every exchange period each replica reports the demand it saw per
// tenant (exchange, sent to the others through the cluster relay) and hears theirs (heard); its bucket for a
// tenant then runs at the limit times its share of the tenant's demand (see share).
type view struct {
	defaultLimit float64 // messages per second when a tenant has no limit of its own; 0: unlimited

	mu      sync.RWMutex
	tenants map[uuid.UUID]*entry
	// changed is when an event last changed a tenant's entry, so that a refresh from a database read made
	// before that event does not undo it (a deleted tenant coming back, an old rate limit).
	changed map[uuid.UUID]time.Time

	// self names this replica in its demand reports; period is how often it reports (0: it does not, and
	// every bucket runs at the whole limit).
	self   string
	period time.Duration
	// lastExchange is when the current demand period began; reports holds the other replicas' latest reports.
	lastExchange time.Time
	reports      map[string]demandReport
}

// demandReport is another replica's latest demand report and when it arrived.
type demandReport struct {
	at     time.Time
	period time.Duration
	demand map[uuid.UUID]float64
}

type entry struct {
	limit   *float64      // the tenant's own limit, nil for the default
	rate    float64       // the cluster-wide limit in messages per second; 0: unlimited
	limiter *rate.Limiter // nil when unlimited; runs at rate × share
	offered atomic.Int64  // messages offered in the current demand period, accepted or refused
	demand  float64       // messages per second offered here in the last period (under view.mu)
	share   float64       // the fraction of rate this replica applies (under view.mu)
}

func newView(defaultLimit float64) *view {
	return &view{defaultLimit: defaultLimit, tenants: map[uuid.UUID]*entry{}, changed: map[uuid.UUID]time.Time{},
		reports: map[string]demandReport{}, lastExchange: time.Now()}
}

// burstFor is the bucket size for a rate: one second of it, at least one message.
func burstFor(r float64) int { return max(1, int(math.Ceil(r))) }

// entry returns a new entry for limit. It keeps old's demand and share (a changed limit takes effect at once,
// already divided among the replicas); callers hold v.mu for writing when old is not nil.
func (v *view) entry(limit *float64, old *entry) *entry {
	l := v.defaultLimit
	if limit != nil {
		l = *limit
	}
	e := &entry{limit: limit, rate: l, share: 1}
	if old != nil {
		e.demand, e.share = old.demand, old.share
	}
	if l > 0 {
		e.limiter = rate.NewLimiter(rate.Limit(l*e.share), burstFor(l*e.share))
	}
	return e
}

func (v *view) has(id uuid.UUID) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	_, ok := v.tenants[id]
	return ok
}

func (v *view) add(t events.Tenant) {
	v.mu.Lock()
	v.tenants[t.ID] = v.entry(t.RateLimit, v.tenants[t.ID])
	v.changed[t.ID] = time.Now()
	v.mu.Unlock()
}

// setLimit replaces a known tenant's limiter.
func (v *view) setLimit(id uuid.UUID, limit *float64) {
	v.mu.Lock()
	if old, ok := v.tenants[id]; ok {
		v.tenants[id] = v.entry(limit, old)
		v.changed[id] = time.Now()
	}
	v.mu.Unlock()
}

func (v *view) remove(id uuid.UUID) {
	v.mu.Lock()
	delete(v.tenants, id)
	v.changed[id] = time.Now()
	v.mu.Unlock()
}

func (v *view) replace(ts []events.Tenant) {
	v.mu.Lock()
	m := make(map[uuid.UUID]*entry, len(ts))
	for _, t := range ts {
		m[t.ID] = v.entry(t.RateLimit, v.tenants[t.ID])
	}
	v.tenants = m
	v.mu.Unlock()
}

// refresh makes the view match ts, the tenants the database held when a read that started at readAt was made:
// tenants that are gone are removed, new ones added, changed rate limits replaced. What an event changed after
// readAt is newer than the read and stays as it is; an unchanged limiter keeps its state.
func (v *view) refresh(ts []events.Tenant, readAt time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	newer := func(id uuid.UUID) bool { c, ok := v.changed[id]; return ok && !c.Before(readAt) }
	in := make(map[uuid.UUID]bool, len(ts))
	for _, t := range ts {
		in[t.ID] = true
		if newer(t.ID) {
			continue
		}
		if e, ok := v.tenants[t.ID]; ok && sameLimit(e.limit, t.RateLimit) {
			continue
		}
		v.tenants[t.ID] = v.entry(t.RateLimit, v.tenants[t.ID])
	}
	for id := range v.tenants {
		if !in[id] && !newer(id) {
			delete(v.tenants, id)
		}
	}
	for id, c := range v.changed {
		if c.Before(readAt) {
			delete(v.changed, id) // the read saw this change
		}
	}
}

func sameLimit(a, b *float64) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

// allow takes n tokens from the tenant's bucket. When there are not enough, it takes none and returns how long
// to wait; ok is false when n exceeds the bucket (the burst) and waiting cannot help.
func (v *view) allow(id uuid.UUID, n int, now time.Time) (wait time.Duration, ok bool) {
	v.mu.RLock()
	e := v.tenants[id]
	v.mu.RUnlock()
	if e == nil || e.limiter == nil {
		return 0, true
	}
	e.offered.Add(int64(n))
	r := e.limiter.ReserveN(now, n)
	if !r.OK() {
		if n > burstFor(e.rate) {
			return 0, false
		}
		// Within the tenant's burst but over this replica's share of it: another replica, or this one once
		// the shares follow the demand, takes it.
		return max(v.period, time.Second), true
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, true
	}
	return 0, true
}

// exchange closes the current demand period at now: it records each tenant's demand here, drops the other
// replicas' reports that are no longer current, sets every bucket to this replica's share, and returns the
// report to send to the others (tenants without demand left out).
func (v *view) exchange(now time.Time) events.TenantDemand {
	v.mu.Lock()
	defer v.mu.Unlock()
	elapsed := now.Sub(v.lastExchange).Seconds()
	v.lastExchange = now
	for r, rep := range v.reports {
		if !current(rep, now) {
			delete(v.reports, r)
		}
	}
	out := events.TenantDemand{Replica: v.self, Period: v.period, Demand: map[uuid.UUID]float64{}}
	for id, e := range v.tenants {
		if e.limiter == nil {
			continue
		}
		n := e.offered.Swap(0)
		e.demand = 0
		if n > 0 && elapsed > 0 {
			e.demand = float64(n) / elapsed
			out.Demand[id] = e.demand
		}
		v.rescale(id, e, now)
	}
	return out
}

// peers is how many other replicas' demand reports were current at the last exchange.
func (v *view) peers() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.reports)
}

// heard records another replica's demand report received at now and rescales the tenants it names.
func (v *view) heard(d events.TenantDemand, now time.Time) {
	if d.Replica == v.self {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reports[d.Replica] = demandReport{at: now, period: d.Period, demand: d.Demand}
	for id := range d.Demand {
		if e := v.tenants[id]; e != nil && e.limiter != nil {
			v.rescale(id, e, now)
		}
	}
}

// current reports whether rep still counts at now: for two of its periods and a half, so that one late or lost
// report does not hand the whole limit to the others.
func current(rep demandReport, now time.Time) bool {
	p := max(rep.period, 100*time.Millisecond)
	return now.Sub(rep.at) <= 2*p+p/2
}

// rescale sets e's bucket to this replica's share of the tenant's limit; v.mu is held for writing.
func (v *view) rescale(id uuid.UUID, e *entry, now time.Time) {
	var others float64
	for _, rep := range v.reports {
		if current(rep, now) {
			others += rep.demand[id]
		}
	}
	s := share(e.demand, others)
	if s == e.share {
		return
	}
	e.share = s
	e.limiter.SetLimitAt(now, rate.Limit(e.rate*s))
	e.limiter.SetBurstAt(now, burstFor(e.rate*s))
}

// shareFloor is the share a replica keeps of a tenant's limit while other replicas report demand for the tenant
// and it saw none: a burst that starts here gets this much until its own demand is reported.
const shareFloor = 0.1

// share is the fraction of a tenant's cluster-wide limit a replica applies, given the messages per second
// offered to it (own) and to the other replicas (others, from their current reports), both over the last
// exchange period. Demand divides the limit: with the shares of all replicas computed from the same reports,
// they add up to 1. A replica that hears of no demand elsewhere (alone, or the relay down) takes the whole
// limit; one that saw none while others did keeps shareFloor.
func share(own, others float64) float64 {
	switch {
	case others <= 0:
		return 1
	case own <= 0:
		return shareFloor
	default:
		return own / (own + others)
	}
}
