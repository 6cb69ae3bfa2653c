package messaging

import (
	"math"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/acme/msgsvc/platform/events"
)

// view is the in-memory set of existing tenants that publishing checks instead of querying per message, with
// each tenant's publish rate limiter. The tenant events keep it fresh on every replica; a miss falls back to
// the database once.
type view struct {
	defaultLimit float64 // messages per second when a tenant has no limit of its own; 0: unlimited

	mu      sync.RWMutex
	tenants map[uuid.UUID]*entry
	// changed is when an event last changed a tenant's entry, so that a refresh from a database read made
	// before that event does not undo it (a deleted tenant coming back, an old rate limit).
	changed map[uuid.UUID]time.Time
}

type entry struct {
	limit   *float64      // the tenant's own limit, nil for the default
	limiter *rate.Limiter // nil when unlimited
}

func newView(defaultLimit float64) *view {
	return &view{defaultLimit: defaultLimit, tenants: map[uuid.UUID]*entry{}, changed: map[uuid.UUID]time.Time{}}
}

func (v *view) entry(limit *float64) *entry {
	l := v.defaultLimit
	if limit != nil {
		l = *limit
	}
	e := &entry{limit: limit}
	if l > 0 {
		e.limiter = rate.NewLimiter(rate.Limit(l), max(1, int(math.Ceil(l))))
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
	v.tenants[t.ID] = v.entry(t.RateLimit)
	v.changed[t.ID] = time.Now()
	v.mu.Unlock()
}

// setLimit replaces a known tenant's limiter.
func (v *view) setLimit(id uuid.UUID, limit *float64) {
	v.mu.Lock()
	if _, ok := v.tenants[id]; ok {
		v.tenants[id] = v.entry(limit)
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
	m := make(map[uuid.UUID]*entry, len(ts))
	for _, t := range ts {
		m[t.ID] = v.entry(t.RateLimit)
	}
	v.mu.Lock()
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
		v.tenants[t.ID] = v.entry(t.RateLimit)
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
	r := e.limiter.ReserveN(now, n)
	if !r.OK() {
		return 0, false
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, true
	}
	return 0, true
}
