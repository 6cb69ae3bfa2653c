package messaging

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/metrics"
	"github.com/acme/msgsvc/platform/periodic"
)

// Partitions checks, at start and periodically, that every tenant has its partition: a missing one is
// reported (log and metric) and made again, so that the tenant's deliveries can be stored; a partition left
// behind by a deletion that did not finish is dropped once it has been without its tenant for the orphan grace.
// A deletion removes the row first and drops the partition only after every replica's consumer of the tenant
// drained (its last stores still need the partition), so a partition without a row is, for a while, a deletion
// in progress, not a leftover. Partitions in the pool (partition_pool) and deleted tenants' partitions the
// background dropper has yet to drop (partition_drops) are never taken for orphans.
type Partitions struct {
	db       *bun.DB
	dir      events.TenantDirectory
	log      *zap.Logger
	missing  prometheus.Gauge
	runs     prometheus.Counter
	repairs  *prometheus.CounterVec
	interval time.Duration
	grace    time.Duration
	loop     *periodic.Loop

	mu      sync.Mutex           // one run at a time
	orphans map[string]time.Time // partition → when a run first found it without its tenant
}

// NewPartitions returns the partition reconciler; a partition without its tenant is dropped once it has been
// so for grace (RECONCILE_ORPHAN_GRACE).
func NewPartitions(db *bun.DB, dir events.TenantDirectory, interval, grace time.Duration, reg prometheus.Registerer, log *zap.Logger) *Partitions {
	p := &Partitions{db: db, dir: dir, interval: interval, grace: grace, orphans: map[string]time.Time{}, log: log.Named("partitions"),
		missing: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "partitions_missing",
			Help: "Tenants found without their partition at the last reconciliation."}),
		runs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "partition_reconcile_runs_total",
			Help: "Runs of the partitions' reconciliation (at start and every RECONCILE_INTERVAL)."}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "partition_repairs_total",
			Help: "Partitions made again (missing) or dropped (orphan) by reconciliation."}, []string{"kind"}),
	}
	reg.MustRegister(p.missing, p.runs, p.repairs)
	return p
}

// Reconcile runs one check.
func (p *Partitions) Reconcile(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.runs.Inc()
	tenants, err := p.dir.Tenants(ctx)
	if err != nil {
		return err
	}
	var names []string
	// The names from pg_class by a join: inhrelid::regclass::text looked each one up and quoted it, 0.10–0.16 s
	// of PostgreSQL's CPU at 10,800 partitions against 0.03 s (a step in the 10,000-tenant bench's creations).
	if err := p.db.NewSelect().TableExpr("pg_inherits AS i").Join("JOIN pg_class AS c ON c.oid = i.inhrelid").
		ColumnExpr("c.relname").Where("i.inhparent = 'messages'::regclass").Scan(ctx, &names); err != nil {
		return err
	}
	attached := make(map[string]bool, len(names))
	for _, n := range names {
		attached[n] = true
	}
	known := make(map[string]bool, len(tenants))
	missing := 0
	var errs []error
	for _, t := range tenants {
		name := PartitionName(t.ID)
		known[name] = true
		if attached[name] {
			continue
		}
		// The tenants were read before the partitions: a tenant deleted in between may have had its partition
		// dropped already (the drop follows the row's delete), and is not made again. Asked after the partitions
		// were read, the directory no longer has such a tenant.
		if _, ok, err := p.dir.Tenant(ctx, t.ID); err != nil {
			errs = append(errs, err)
			continue
		} else if !ok {
			continue
		}
		missing++
		p.log.Error("tenant has no partition; making it again", zap.String("tenant_id", t.ID.String()), zap.String("partition", name))
		err := p.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.ExecContext(ctx, "DROP TABLE IF EXISTS "+partitionIdent(t.ID)); err != nil {
				return err
			}
			return CreatePartition(ctx, tx, t.ID)
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.repairs.WithLabelValues("missing").Inc()
	}
	p.missing.Set(float64(missing))
	// Pooled partitions (attached ahead of time for tenants not created yet) and deleted tenants' partitions
	// waiting for the background dropper are no orphans, and no longer orphan candidates (before the orphans are
	// pruned below, so that a candidate noted in an earlier run is forgotten). Read after the attached
	// partitions: a partition pooled before that read is in this one, one claimed since then has its tenant, and
	// one dropped since then is found gone.
	var kept []uuid.UUID
	if err := p.db.NewRaw("SELECT tenant_id FROM partition_pool UNION ALL SELECT tenant_id FROM partition_drops").Scan(ctx, &kept); err != nil {
		return errors.Join(append(errs, fmt.Errorf("read pooled and pending partitions: %w", err))...)
	}
	for _, id := range kept {
		known[PartitionName(id)] = true
	}
	now := time.Now()
	for name := range p.orphans {
		if known[name] || !attached[name] {
			delete(p.orphans, name) // its tenant is back, or the partition is gone
		}
	}
	for name := range attached {
		if known[name] || !strings.HasPrefix(name, "messages_tenant_") {
			continue
		}
		id, err := uuid.Parse(strings.TrimPrefix(name, "messages_tenant_"))
		if err != nil {
			continue
		}
		// Rows and partitions commit together, so an attached partition without a row is a deletion in progress
		// or, after the grace, a leftover.
		if _, ok, err := p.dir.Tenant(ctx, id); err != nil || ok {
			continue
		}
		seen, ok := p.orphans[name]
		if !ok {
			p.orphans[name] = now
			continue
		}
		if now.Sub(seen) < p.grace {
			continue
		}
		p.log.Warn("dropping the partition of a tenant that does not exist", zap.String("partition", name))
		if err := DropPartition(ctx, p.db, id); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(p.orphans, name)
		p.repairs.WithLabelValues("orphan").Inc()
	}
	return errors.Join(errs...)
}

// Start runs a first check and the periodic loop.
func (p *Partitions) Start(ctx context.Context) error {
	if err := p.Reconcile(ctx); err != nil {
		p.log.Warn("partition reconciliation failed", zap.Error(err))
	}
	p.loop = periodic.Start(p.interval, p.Reconcile, func(err error) {
		p.log.Warn("partition reconciliation failed", zap.Error(err))
	})
	return nil
}

// Stop ends the loop.
func (p *Partitions) Stop(context.Context) error {
	p.loop.Stop()
	return nil
}
