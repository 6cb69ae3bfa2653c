package cluster

import (
	"context"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"go.uber.org/zap"
)

// Membership keeps this replica's heartbeat in PostgreSQL (table replicas) and the set of live replicas, the
// ones whose heartbeat is younger than the TTL. It places each tenant on one live replica by rendezvous
// (highest random weight) hashing, so that every replica computes the same owner from the same set and a
// change of the set moves only the tenants of the replica that left, or a 1/R share to one that joined.
//
// Views of the set may differ between replicas for up to one heartbeat interval; the consumer runtime relies on
// the broker (single active consumer queues) for the guarantee that at most one consumer of a tenant queue is
// active, and on the placement for the balance.
type Membership struct {
	db       *bun.DB
	self     string
	interval time.Duration
	ttl      time.Duration
	log      *zap.Logger

	mu       sync.RWMutex
	live     []string // sorted
	onChange []func()
	left     bool
	started  bool

	stop chan struct{}
	done chan struct{}
}

// NewMembership returns the membership of replica self; Start joins.
func NewMembership(db *bun.DB, self string, interval, ttl time.Duration, log *zap.Logger) *Membership {
	return &Membership{db: db, self: self, interval: interval, ttl: ttl, log: log.Named("membership"),
		live: []string{self}, stop: make(chan struct{}), done: make(chan struct{})}
}

// Self is this replica's id.
func (m *Membership) Self() string { return m.self }

// OnChange registers fn, called (on the heartbeat goroutine) after the set of live replicas changed.
func (m *Membership) OnChange(fn func()) {
	m.mu.Lock()
	m.onChange = append(m.onChange, fn)
	m.mu.Unlock()
}

// Live returns the ids of the live replicas, sorted.
func (m *Membership) Live() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return slices.Clone(m.live)
}

// Owner returns the live replica that owns key.
func (m *Membership) Owner(key uuid.UUID) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return Owner(m.live, key)
}

// Owns reports whether this replica owns key; a replica that left owns nothing.
func (m *Membership) Owns(key uuid.UUID) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return !m.left && Owner(m.live, key) == m.self
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

// Start writes the first heartbeat, reads the live set and beats every interval until Leave.
func (m *Membership) Start(ctx context.Context) error {
	if err := m.beat(ctx); err != nil {
		// The database is down: this replica sees itself alone until it answers (its heartbeats retry).
		m.log.Warn("membership: first heartbeat failed; retrying", zap.Error(err))
	}
	m.mu.Lock()
	m.started = true
	m.mu.Unlock()
	go m.run()
	return nil
}

func (m *Membership) run() {
	defer close(m.done)
	t := time.NewTicker(m.interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), m.interval)
			err := m.beat(ctx)
			cancel()
			if err != nil && !failing {
				m.log.Warn("membership: heartbeat failed; others consider this replica dead after the TTL", zap.Error(err),
					zap.Duration("ttl", m.ttl))
			} else if err == nil && failing {
				m.log.Info("membership: heartbeat works again")
			}
			failing = err != nil
		}
	}
}

// beat upserts this replica's heartbeat and reads the live set.
func (m *Membership) beat(ctx context.Context) error {
	if _, err := m.db.ExecContext(ctx, `INSERT INTO replicas (id) VALUES (?)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()`, m.self); err != nil {
		return err
	}
	var live []string
	if err := m.db.NewSelect().Table("replicas").Column("id").
		Where("heartbeat_at > now() - ?::interval", m.ttl.String()).Order("id").Scan(ctx, &live); err != nil {
		return err
	}
	if !slices.Contains(live, m.self) {
		live = append(live, m.self)
		slices.Sort(live)
	}
	m.mu.Lock()
	changed := !slices.Equal(live, m.live)
	old := m.live
	m.live = live
	subs := slices.Clone(m.onChange)
	m.mu.Unlock()
	if changed {
		m.log.Info("live replicas changed", zap.Strings("live", live), zap.Strings("before", old))
		for _, fn := range subs {
			fn()
		}
	}
	return nil
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
	if !started {
		return nil
	}
	<-m.done
	if _, err := m.db.ExecContext(ctx, `DELETE FROM replicas WHERE id = ?`, m.self); err != nil {
		m.log.Warn("membership: could not remove this replica; the others wait for its heartbeat to expire", zap.Error(err))
	}
	// Rows of replicas dead for long are removed by whoever leaves.
	_, _ = m.db.ExecContext(ctx, `DELETE FROM replicas WHERE heartbeat_at < now() - interval '1 hour'`)
	return nil
}
