package cluster

import (
	"context"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"
)

// BrokerHealth tells whether this replica's consumer connections to the broker are up. broker.PoolHealth
// implements it for the consumer pool.
type BrokerHealth interface {
	// Down reports whether the consumer connections are down (closed, or reconnecting), and since when.
	Down() (since time.Time, down bool)
}

// MembershipOptions configure a Membership.
type MembershipOptions struct {
	// Self is this replica's id.
	Self string
	// Interval is the heartbeat interval; each heartbeat's statement must answer within it.
	Interval time.Duration
	// TTL is how long the other replicas count this one live after its last heartbeat.
	TTL time.Duration
	// Margin is how long before the TTL runs out a replica that could not renew its heartbeat stops owning
	// tenants (config.Config.ReplicaLeaseMargin): long enough for its consumers to drain. When the lease would not
	// last two heartbeats with it (a REPLICA_TTL the configuration refuses), it is cut to TTL/2, so that a lease
	// lasts at all.
	Margin time.Duration
	// BrokerGrace is how long the consumer connections may stay down before this replica stops heartbeating
	// and gives its tenants up; 0 never does.
	BrokerGrace time.Duration
}

// Membership keeps this replica's heartbeat in PostgreSQL (table replicas) and the set of live replicas, the
// ones whose heartbeat is younger than the TTL. It places each tenant on one live replica by rendezvous
// (highest random weight) hashing, so that every replica computes the same owner from the same set and a
// change of the set moves only the tenants of the replica that left, or a 1/R share to one that joined.
//
// Ownership is a lease: this replica owns tenants only while its last successful heartbeat is younger than the
// TTL less a margin (the time its consumers need to drain), so a replica cut off from PostgreSQL stops its
// consumers before the others, which drop it at the TTL, take them over. A replica whose consumer connections
// to the broker stay down for BrokerGrace stops heartbeating and owns nothing, so that its tenants move; it
// heartbeats again once they are back. After its lease lapsed, a replica counts for one TTL every replica that
// was live before the lapse (see lease), so that the end of a database outage does not make each replica take
// every tenant for a moment.
//
// Views of the set may differ between replicas for up to one heartbeat interval; the consumer runtime relies on
// the broker (single active consumer queues) for the guarantee that at most one consumer of a tenant queue is
// active, and on the placement for the balance.
type Membership struct {
	beats  *Heartbeats
	broker BrokerHealth // nil: not watched
	opts   MembershipOptions
	log    *zap.Logger
	now    func() time.Time

	mu       sync.RWMutex
	lease    *lease
	live     []string // sorted; the last set read, self included
	owning   bool     // whether the subscribers were last told that this replica holds its lease
	shown    []string // the replicas the subscribers were last told tenants are placed on
	failing  bool     // the last heartbeat failed
	onChange []func()
	left     bool
	started  bool

	stop chan struct{}
	done chan struct{}
}

// NewMembership returns the membership of replica opts.Self, heartbeating through beats; Start joins. broker may
// be nil.
func NewMembership(beats *Heartbeats, broker BrokerHealth, opts MembershipOptions, log *zap.Logger) *Membership {
	log = log.Named("membership")
	// Until 2026-12-06 any margin over TTL/2 was cut: with the defaults (TTL 20 s, drain 10 s, heartbeat 2 s)
	// every start warned and cut the margin to 10 s, less than the drain it is there for.
	if opts.Margin > opts.TTL-2*opts.Interval {
		log.Warn("REPLICA_TTL is too short for the lease margin (CONSUMER_DRAIN_TIMEOUT and a heartbeat): a replica "+
			"cut off may still drain when another takes its tenants over", zap.Duration("ttl", opts.TTL),
			zap.Duration("margin", opts.Margin), zap.Duration("margin_used", opts.TTL/2))
		opts.Margin = opts.TTL / 2
	}
	return newMembership(beats, broker, opts, log, time.Now)
}

func newMembership(beats *Heartbeats, broker BrokerHealth, opts MembershipOptions, log *zap.Logger, now func() time.Time) *Membership {
	return &Membership{beats: beats, broker: broker, opts: opts, log: log, now: now,
		lease: newLease(opts.TTL, opts.Margin, now()), live: []string{opts.Self},
		stop: make(chan struct{}), done: make(chan struct{})}
}

// Self is this replica's id.
func (m *Membership) Self() string { return m.opts.Self }

// OnChange registers fn, called (on the heartbeat goroutine) after the set of live replicas changed, and when
// this replica's lease ended or began again.
func (m *Membership) OnChange(fn func()) {
	m.mu.Lock()
	m.onChange = append(m.onChange, fn)
	m.mu.Unlock()
}

// Live returns the ids of the live replicas, sorted; this replica is among them only while it holds its lease.
func (m *Membership) Live() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.placing(m.now())
}

// placing returns the replicas tenants are placed on as this replica sees them at now; m.mu must be held.
func (m *Membership) placing(now time.Time) []string {
	if !m.left && m.lease.held(now) {
		return slices.Clone(m.live)
	}
	return slices.DeleteFunc(slices.Clone(m.live), func(r string) bool { return r == m.opts.Self })
}

// Members returns the ids of the replicas whose heartbeat was younger than the TTL at the last heartbeat, sorted:
// the ones alive, whether or not they (or this replica) hold their lease.
func (m *Membership) Members() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return slices.Clone(m.live)
}

// Owner returns the live replica that owns key ("" when this replica lost its lease and saw no other).
func (m *Membership) Owner(key uuid.UUID) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return Owner(m.placing(m.now()), key)
}

// Owns reports whether this replica owns key: it holds its lease and key is placed on it. A replica that left
// owns nothing.
func (m *Membership) Owns(key uuid.UUID) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	now := m.now()
	return !m.left && m.lease.held(now) && Owner(m.live, key) == m.opts.Self
}

// Holds reports whether this replica holds its lease now.
func (m *Membership) Holds() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return !m.left && m.lease.held(m.now())
}

// Owner returns the replica of replicas with the highest weight for key ("" when there is none).
func Owner(replicas []string, key uuid.UUID) string {
	var (
		best   string
		bestW  uint64
		picked bool
	)
	for _, r := range replicas {
		w := weight(r, key)
		if !picked || w > bestW || (w == bestW && r < best) {
			best, bestW, picked = r, w, true
		}
	}
	return best
}

func weight(replica string, key uuid.UUID) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(replica))
	_, _ = h.Write(key[:])
	x := h.Sum64()
	// splitmix64's finaliser: fnv's low bits mix poorly for keys that differ in a few bytes.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Start writes the first heartbeat, reads the live set and beats every interval until Leave. A first heartbeat
// that fails is retried at the next interval; until one succeeds, this replica owns nothing.
func (m *Membership) Start(ctx context.Context) error {
	// A first heartbeat that fails for longer than the lease renews a lapsed lease when it works (see lease);
	// the time spent before, in migrations for example, does not count.
	m.mu.Lock()
	m.lease.start = m.now()
	m.mu.Unlock()
	m.tick(ctx)
	m.mu.Lock()
	m.started = true
	m.mu.Unlock()
	go m.run()
	return nil
}

func (m *Membership) run() {
	defer close(m.done)
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	// Fires when the lease runs out between heartbeats, so that the consumers stop at once, not at the next tick.
	expired := time.NewTimer(m.untilExpiry())
	defer expired.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-expired.C:
			m.settle()
		case <-t.C:
			m.tick(context.Background())
		}
		expired.Reset(m.untilExpiry())
	}
}

// untilExpiry returns the time left until the lease runs out, or an hour when it is not held.
func (m *Membership) untilExpiry() time.Duration {
	m.mu.RLock()
	defer m.mu.RUnlock()
	now := m.now()
	if !m.lease.held(now) {
		return time.Hour
	}
	return m.lease.expiry().Sub(now)
}

// tick renews the lease with one heartbeat, unless the broker connections have been down for the grace, in
// which case it gives the lease up; then it tells the subscribers what changed.
func (m *Membership) tick(parent context.Context) {
	defer m.settle()
	now := m.now()
	if since, down := m.brokerDown(now); down {
		m.mu.Lock()
		was := m.lease.surrendered
		m.lease.surrender()
		m.mu.Unlock()
		if !was {
			m.log.Warn("membership: the consumer connections to RabbitMQ are down for longer than REPLICA_BROKER_GRACE; "+
				"this replica stops heartbeating and gives its tenants up until they are back",
				zap.Duration("down_for", now.Sub(since)), zap.Duration("grace", m.opts.BrokerGrace))
		}
		return
	}
	m.mu.RLock()
	window := m.lease.window(now)
	failing := m.failing
	m.mu.RUnlock()
	ctx, cancel := context.WithTimeout(parent, m.opts.Interval)
	live, err := m.beats.Beat(ctx, m.opts.Self, window)
	cancel()
	if err != nil {
		if !failing {
			m.log.Warn("membership: heartbeat failed; this replica stops owning tenants when its lease runs out, "+
				"and the others take them over after the TTL", zap.Error(err), zap.Duration("ttl", m.opts.TTL),
				zap.Duration("lease_left", max(0, m.untilExpiryAt(now))))
		}
		m.mu.Lock()
		m.failing = true
		m.mu.Unlock()
		return
	}
	m.mu.Lock()
	lapsed, surrendered := m.lease.lapsed(now), m.lease.surrendered
	m.lease.renew(now)
	m.live = live
	m.failing = false
	m.mu.Unlock()
	switch {
	case failing:
		m.log.Info("membership: heartbeat works again", zap.Bool("lease_lapsed", lapsed))
	case surrendered:
		m.log.Info("membership: the consumer connections to RabbitMQ are back; this replica heartbeats again")
	}
	if lapsed {
		m.log.Info("membership: lease renewed after it lapsed; for one TTL, replicas live before count as live until they renew",
			zap.Duration("window", window), zap.Duration("ttl", m.opts.TTL))
	}
}

// untilExpiryAt is untilExpiry at now; m.mu must not be held.
func (m *Membership) untilExpiryAt(now time.Time) time.Duration {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.lease.renewed.IsZero() {
		return 0
	}
	return m.lease.expiry().Sub(now)
}

// brokerDown reports whether the consumer connections have been down for at least the grace, and since when.
func (m *Membership) brokerDown(now time.Time) (time.Time, bool) {
	if m.broker == nil || m.opts.BrokerGrace <= 0 {
		return time.Time{}, false
	}
	since, down := m.broker.Down()
	return since, down && now.Sub(since) >= m.opts.BrokerGrace
}

// settle tells the subscribers when the replicas tenants are placed on changed since they were last told,
// this replica's lease included.
func (m *Membership) settle() {
	m.mu.Lock()
	now := m.now()
	owning := !m.left && m.lease.held(now)
	placing := m.placing(now)
	changed := owning != m.owning || !slices.Equal(placing, m.shown)
	wasOwning, before := m.owning, m.shown
	m.owning, m.shown = owning, placing
	subs := slices.Clone(m.onChange)
	m.mu.Unlock()
	if !changed {
		return
	}
	switch {
	case wasOwning && !owning:
		m.log.Warn("membership: lease lost; this replica owns no tenant and stops its consumers", zap.Strings("live", placing))
	case !wasOwning && owning:
		m.log.Info("membership: lease held; this replica owns its share of the tenants", zap.Strings("live", placing))
	default:
		m.log.Info("live replicas changed", zap.Strings("live", placing), zap.Strings("before", before))
	}
	for _, fn := range subs {
		fn()
	}
}

// Leave stops the heartbeat and deletes this replica's row, so that the others take its tenants over at their
// next heartbeat instead of after the TTL. From now on this replica owns nothing. It may be called more than
// once.
func (m *Membership) Leave(ctx context.Context) error {
	m.mu.Lock()
	if m.left {
		m.mu.Unlock()
		return nil
	}
	m.left = true
	started := m.started
	m.mu.Unlock()
	close(m.stop)
	defer m.beats.Close()
	if !started {
		return nil
	}
	<-m.done
	if err := m.beats.Remove(ctx, m.opts.Self); err != nil {
		m.log.Warn("membership: could not remove this replica; the others wait for its heartbeat to expire", zap.Error(err))
	}
	return nil
}
