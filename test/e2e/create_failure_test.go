package e2e

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/test/testenv"
)

// A creation that fails after the queues were declared and the partition made leaves nothing behind.
func TestFailedCreateLeavesNothingHalfMade(t *testing.T) {
	s := testenv.Get(t)
	var created events.Tenant
	failing := fx.Invoke(func(bus *events.Bus) {
		events.Subscribe(bus, "test.fail", func(_ context.Context, e events.TenantCreating) error {
			if e.Tenant.Name == "doomed" {
				created = e.Tenant
				return errors.New("injected failure")
			}
			return nil
		})
	})
	a := testenv.Start(t, s.Config(t), failing)
	db := a.DB()

	r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": "doomed"})
	require.Equal(t, http.StatusServiceUnavailable, r.Status, string(r.Body))
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
	require.NotEqual(t, [16]byte{}, [16]byte(created.ID))
	require.Equal(t, 0, testenv.Count(t, db, "SELECT count(*) FROM tenants"))
	// Its partition is back in the pool (claimed from it) or gone (made inline): no partition outside the pool.
	require.Equal(t, 0, testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname LIKE 'messages\_tenant\_%' AND relkind = 'r'
		AND relname NOT IN (SELECT 'messages_tenant_' || replace(tenant_id::text, '-', '') FROM partition_pool)`))
	for _, q := range []string{consumer.QueueName(created.ID), consumer.DeadLetterQueueName(created.ID)} {
		ok, _, _ := testenv.QueueState(t, a.Config.AMQPURL, q)
		require.False(t, ok, q)
	}
	// The service still works.
	a.CreateTenant("fine", 1)
}
