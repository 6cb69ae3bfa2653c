package consumer_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/test/testenv"
)

// revocablePlacement owns nothing once revoked, as a replica whose lease ran out.
type revocablePlacement struct {
	consumer.Placement
	revoked atomic.Bool
}

func (p *revocablePlacement) Owns(id uuid.UUID) bool {
	return !p.revoked.Load() && p.Placement.Owns(id)
}

// failingDirectory fails to list the tenants once broken, as when the database refuses this replica.
type failingDirectory struct {
	events.TenantDirectory
	broken atomic.Bool
}

func (d *failingDirectory) Tenants(ctx context.Context) ([]events.Tenant, error) {
	if d.broken.Load() {
		return nil, errors.New("the database refuses this replica")
	}
	return d.TenantDirectory.Tenants(ctx)
}

// TestReconcileStopsConsumersItDoesNotOwnWithoutTheDatabase: a replica cut off from PostgreSQL loses its lease
// and owns nothing; reconciliation must stop its consumers although it cannot read the tenant list, or the
// queues stay with it (single active consumer) while it stores nothing.
func TestReconcileStopsConsumersItDoesNotOwnWithoutTheDatabase(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReconcileInterval = time.Hour // only the pass this test runs
	place, dir := &revocablePlacement{}, &failingDirectory{}
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt),
		fx.Decorate(func(p consumer.Placement) consumer.Placement { place.Placement = p; return place }),
		fx.Decorate(func(d events.TenantDirectory) events.TenantDirectory { dir.TenantDirectory = d; return dir }))
	tid := uuid.MustParse(a.CreateTenant("cut-off", 2))
	require.Equal(t, 2, rt.Workers(tid))

	place.revoked.Store(true)
	dir.broken.Store(true)
	require.Error(t, rt.Reconcile(context.Background()), "the tenant list cannot be read")
	require.Zero(t, rt.Workers(tid), "the consumer of a tenant this replica does not own still runs")
	// The broker counts the consumer gone a moment after the channel's close.
	testenv.Eventually(t, 5*time.Second, func() bool {
		_, _, consumers := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
		return consumers == 0
	}, "the queue still has this replica's consumer")
}
