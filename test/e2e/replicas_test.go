package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/test/testenv"
)

// countingHandler counts the deliveries one replica stored.
type countingHandler struct {
	inner consumer.Handler
	n     atomic.Int64
}

func (h *countingHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	errs := h.inner.Handle(ctx, tenant, ds)
	h.n.Add(int64(len(ds)))
	return errs
}

func TestTwoReplicasShareTheWork(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	var rtA, rtB *consumer.Runtime
	hA, hB := &countingHandler{}, &countingHandler{}
	a := testenv.Start(t, cfg, fx.Populate(&rtA),
		fx.Decorate(func(h consumer.Handler) consumer.Handler { hA.inner = h; return hA }))
	cfgB := cfg
	cfgB.ReplicaID = testenv.RandomName("replica-b-")
	b := testenv.Start(t, cfgB, fx.Populate(&rtB),
		fx.Decorate(func(h consumer.Handler) consumer.Handler { hB.inner = h; return hB }))
	db := a.DB()

	tenant := a.CreateTenant("shared", 3)
	tid := uuid.MustParse(tenant)
	testenv.Eventually(t, time.Second, func() bool { return rtB.Workers(tid) == 3 }, "replica B starts the consumer within a second")
	testenv.Eventually(t, 2*time.Second, func() bool {
		_, _, c := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
		return c == 2
	}, "two consumers on the queue")

	var ids []string
	for i := range 300 {
		app := a
		if i%2 == 1 {
			app = b
		}
		ids = append(ids, app.Publish(tenant, map[string]int{"i": i}))
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == len(ids)
	}, "all stored")
	require.Positive(t, hA.n.Load(), "replica A consumed")
	require.Positive(t, hB.n.Load(), "replica B consumed")

	require.Equal(t, http.StatusOK, a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/concurrency", map[string]int{"workers": 7}).Status)
	testenv.Eventually(t, time.Second, func() bool { return rtB.Workers(tid) == 7 }, "replica B resizes within a second")

	require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant, nil).Status)
	testenv.Eventually(t, time.Second, func() bool { return rtB.Workers(tid) == 0 }, "replica B stops within a second")
	require.Equal(t, http.StatusNotFound, b.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]int{}}).Status)
	require.Equal(t, http.StatusNotFound, b.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil).Status)

	// A tenant created on B is consumed by A too.
	t2 := b.CreateTenant("from-b", 2)
	testenv.Eventually(t, time.Second, func() bool { return rtA.Workers(uuid.MustParse(t2)) == 2 }, "replica A follows B")
}

func TestReconciliationRepairs(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReconcileInterval = 500 * time.Millisecond
	cfg.ReconcileOrphanGrace = time.Second
	a := testenv.Start(t, cfg)
	db := a.DB()
	tenant := a.CreateTenant("repair", 2)
	tid := uuid.MustParse(tenant)
	ch := testenv.AMQP(t, cfg.AMQPURL)

	// A queue deleted behind the service's back is declared again and consumed.
	_, err := ch.QueueDelete(consumer.QueueName(tid), false, false, false)
	require.NoError(t, err)
	testenv.Eventually(t, 10*time.Second, func() bool {
		ok, _, c := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
		return ok && c == 1
	}, "queue restored with its consumer")
	id := a.Publish(tenant, map[string]bool{"after": true})
	testenv.Eventually(t, 5*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(id)) == 1
	}, "stored after queue repair")

	// An orphan queue (no such tenant) is removed.
	orphan := consumer.QueueName(uuid.New())
	_, err = ch.QueueDeclare(orphan, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	require.NoError(t, err)
	testenv.Eventually(t, 10*time.Second, func() bool {
		ok, _, _ := testenv.QueueState(t, cfg.AMQPURL, orphan)
		return !ok
	}, "orphan queue removed")

	// A missing partition is reported and made again.
	_, err = db.Exec(context.Background(), fmt.Sprintf(`ALTER TABLE messages DETACH PARTITION %q`, messaging.PartitionName(tid)))
	require.NoError(t, err)
	_, err = db.Exec(context.Background(), fmt.Sprintf(`DROP TABLE %q`, messaging.PartitionName(tid)))
	require.NoError(t, err)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(scrape(t, a.URL), `msgsvc_partition_repairs_total{kind="missing"} 1`)
	}, "missing partition reported and repaired")
	id = a.Publish(tenant, map[string]bool{"after_partition": true})
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(id)) == 1
	}, "stored after partition repair")
	require.NotEmpty(t, a.Logs.FilterMessage("tenant has no partition; making it again").All())
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A reconciliation that runs while tenants are being created must not stop their new consumers nor delete
// their queues (declared before the row commits).
func TestReconcileDoesNotStopNewTenants(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	// Often enough that runs overlap the creations (each takes tens of milliseconds), not so often that the
	// runs' own queue inspections starve RabbitMQ.
	cfg.ReconcileInterval = 150 * time.Millisecond
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt))
	ids := make([]string, 40)
	statuses := make([]int, len(ids))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": fmt.Sprintf("racing-%d", i), "concurrency_config": 1})
			statuses[i] = r.Status
			if r.Status == http.StatusCreated {
				var c struct{ ID string }
				r.JSON(t, &c)
				ids[i] = c.ID
			}
		}()
	}
	wg.Wait()
	for i, id := range ids {
		require.Equal(t, http.StatusCreated, statuses[i])
		require.Equal(t, 1, rt.Workers(uuid.MustParse(id)), "consumer of %s running right after its creation", id)
	}
	require.Empty(t, a.Logs.FilterMessage("stopping the consumer of a tenant that no longer exists").All())
	require.Empty(t, a.Logs.FilterMessage("deleting orphan queue of a tenant that does not exist").All())
}
