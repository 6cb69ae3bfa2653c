package consumer_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/test/testenv"
)

// counter returns the value of the application's metric without labels name (0 before its first count).
func counter(t *testing.T, a *testenv.App, name string) float64 {
	t.Helper()
	r := a.Do(http.MethodGet, "/metrics", nil)
	for _, line := range strings.Split(string(r.Body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	return 0
}

// holdingDirectory is the tenant directory with a hook: once armed, the next call of the chosen kind runs the
// hook after it read the database and before it returns, so a reconciliation pass is held between its read
// and what it does with it.
type holdingDirectory struct {
	events.TenantDirectory
	mu       sync.Mutex
	onList   func()
	onTenant func(uuid.UUID)
}

func (d *holdingDirectory) Tenants(ctx context.Context) ([]events.Tenant, error) {
	ts, err := d.TenantDirectory.Tenants(ctx)
	d.mu.Lock()
	hook := d.onList
	d.onList = nil
	d.mu.Unlock()
	if hook != nil {
		hook()
	}
	return ts, err
}

func (d *holdingDirectory) Tenant(ctx context.Context, id uuid.UUID) (events.Tenant, bool, error) {
	t, ok, err := d.TenantDirectory.Tenant(ctx, id)
	d.mu.Lock()
	hook := d.onTenant
	d.onTenant = nil
	d.mu.Unlock()
	if hook != nil {
		hook(id)
	}
	return t, ok, err
}

// startHolding starts the application with cfg and its tenant directory wrapped in a holdingDirectory.
func startHolding(t *testing.T, cfg config.Config) (*testenv.App, *consumer.Runtime, *holdingDirectory) {
	t.Helper()
	dir := &holdingDirectory{}
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt), fx.Decorate(func(d events.TenantDirectory) events.TenantDirectory {
		dir.TenantDirectory = d
		return dir
	}))
	return a, rt, dir
}

// heldTenant starts the application with a holdingDirectory and no reconciliation pass but the test's own, creates
// a tenant with workers workers and waits until its consumer runs.
func heldTenant(t *testing.T, name string, workers int) (cfg config.Config, a *testenv.App, rt *consumer.Runtime, dir *holdingDirectory, tenant string, tid uuid.UUID) {
	t.Helper()
	cfg = testenv.Get(t).Config(t)
	cfg.ReconcileInterval = time.Hour // only the passes the test runs
	a, rt, dir = startHolding(t, cfg)
	tenant = a.CreateTenant(name, workers)
	tid = uuid.MustParse(tenant)
	testenv.Eventually(t, 10*time.Second, func() bool { return rt.Workers(tid) == workers }, "the tenant's consumer runs")
	return cfg, a, rt, dir, tenant, tid
}

// TestReconcileDoesNotRecreateADeletedTenant holds a reconciliation pass after it read the tenant list, or
// after it checked that the tenant still exists, and deletes the tenant meanwhile: the pass must not re-create
// the deleted tenant's queues (they would leak: without the management API nothing removes them) nor start a
// consumer for it.
func TestReconcileDoesNotRecreateADeletedTenant(t *testing.T) {
	for _, hold := range []string{"after the tenant list", "after the existence check"} {
		t.Run(hold, func(t *testing.T) {
			s := testenv.Get(t)
			cfg := s.Config(t)
			cfg.ReconcileInterval = time.Hour // only the passes this test runs
			cfg.RabbitMQManagementURL = ""    // no orphan cleanup to hide a leak
			a, rt, dir := startHolding(t, cfg)
			tenant := a.CreateTenant("doomed", 1)
			tid := uuid.MustParse(tenant)
			// The tenant's queue is lost (an operator deleted it, a broker lost it): the pass would declare it again.
			ch := testenv.AMQP(t, cfg.AMQPURL)
			_, err := ch.QueueDelete(consumer.QueueName(tid), false, false, false)
			require.NoError(t, err)

			deleteTenant := func() {
				r := a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant, nil)
				require.Equal(t, http.StatusNoContent, r.Status, string(r.Body))
			}
			dir.mu.Lock()
			if hold == "after the tenant list" {
				dir.onList = deleteTenant
			} else {
				dir.onTenant = func(id uuid.UUID) {
					if id == tid {
						deleteTenant()
					}
				}
			}
			dir.mu.Unlock()
			require.NoError(t, rt.Reconcile(context.Background()))

			exists, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
			require.False(t, exists, "the deleted tenant's queue was re-created")
			exists, _, _ = testenv.QueueState(t, cfg.AMQPURL, consumer.DeadLetterQueueName(tid))
			require.False(t, exists, "the deleted tenant's dead-letter queue was re-created")
			require.Zero(t, rt.Workers(tid), "a consumer runs for the deleted tenant")
		})
	}
}

// TestAPassWithATenantListFromBeforeADeletionStartsNoConsumerForIt: a deletion stops the tenant's consumer, then
// waits for the queue's other consumers to leave before it deletes the queue. A reconciliation pass that read the
// tenant list before the deletion and reaches the tenant in that window found no consumer of it here and started
// one, on a queue about to go: the deletion waited for it too (up to the drain timeout), or deleted the queue
// from under it mid-start. Here another client's consumer on the queue holds the deletion in that window while
// the pass goes on; the pass must start nothing for the deleted tenant, and the deletion ends with the queue gone.
func TestAPassWithATenantListFromBeforeADeletionStartsNoConsumerForIt(t *testing.T) {
	cfg, a, rt, dir, tenant, tid := heldTenant(t, "doomed", 1)
	// Another client's consumer: the single active consumer's follower, then the queue's only consumer.
	ch := testenv.AMQP(t, cfg.AMQPURL)
	_, err := ch.Consume(consumer.QueueName(tid), "bystander", false, false, false, false, nil)
	require.NoError(t, err)

	deleted := make(chan int, 1)
	dir.mu.Lock()
	dir.onList = func() {
		go func() { deleted <- a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant, nil).Status }()
		// The deletion stopped this replica's consumer and waits for the bystander to leave the queue.
		testenv.Eventually(t, 10*time.Second, func() bool {
			for _, e := range a.Logs.FilterMessage("consumer stopped").All() {
				if e.ContextMap()["tenant_id"] == tenant {
					return true
				}
			}
			return false
		}, "the deleted tenant's consumer stopped")
	}
	dir.mu.Unlock()
	require.NoError(t, rt.Reconcile(context.Background()))
	require.NoError(t, ch.Cancel("bystander", false))
	select {
	case status := <-deleted:
		require.Equal(t, http.StatusNoContent, status)
	case <-time.After(15 * time.Second):
		t.Fatal("the deletion did not end once the bystander left")
	}
	for _, e := range a.Logs.FilterMessage("consumer started").All() {
		if m := e.ContextMap(); m["tenant_id"] == tenant && m["reason"] != "tenant created" {
			t.Errorf("a consumer of the tenant started during its deletion (%v)", m["reason"])
		}
	}
	exists, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
	require.False(t, exists, "the deleted tenant's queue is still there")
}

// TestAPassWithATenantListFromBeforeAResizeKeepsTheNewSize: a reconciliation pass reads the tenant list, then a
// concurrency change resizes the tenant's consumer, then the pass reaches the tenant with the count it read
// before. It must leave the new size: before, it resized the consumer back to the old count ("reconcile
// resize"), and the change was undone until the next pass (30 s by default). TestResizeLiveConsumer saw it once.
func TestAPassWithATenantListFromBeforeAResizeKeepsTheNewSize(t *testing.T) {
	_, a, rt, dir, tenant, tid := heldTenant(t, "resized", 3)

	dir.mu.Lock()
	dir.onList = func() {
		r := a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/concurrency", map[string]int{"workers": 1})
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		testenv.Eventually(t, 10*time.Second, func() bool { return rt.Workers(tid) == 1 }, "the resize took effect")
	}
	dir.mu.Unlock()
	require.NoError(t, rt.Reconcile(context.Background()))
	require.Equal(t, 1, rt.Workers(tid), "the pass undid the concurrency change")
	for _, e := range a.Logs.FilterMessage("consumer started").All() {
		if m := e.ContextMap(); m["tenant_id"] == tenant && m["reason"] == "reconcile resize" {
			t.Errorf("the pass resized the consumer to the count it read before the change (%v workers)", m["workers"])
		}
	}
	// The next pass reads the new count and has nothing to do.
	require.NoError(t, rt.Reconcile(context.Background()))
	require.Equal(t, 1, rt.Workers(tid))
}

// TestPassesTakeTheListingAgainAtScale: from reuseListingFrom owned tenants (lowered here to 1), a pass takes the
// last pass's listing again for the three passes after its own, where a deleted queue cancels its consumers
// (classic queues; quorum ones on RabbitMQ 4.x); the passes still inspect every queue in its turn, and a queue
// deleted behind the service's back is still declared again and consumed. On RabbitMQ 3.x with quorum queues
// every pass takes its own.
func TestPassesTakeTheListingAgainAtScale(t *testing.T) {
	defer consumer.SetReuseListingFrom(consumer.SetReuseListingFrom(1))
	s := testenv.Get(t)
	for _, qt := range []string{"classic", "quorum"} {
		t.Run(qt, func(t *testing.T) {
			cfg := s.Config(t)
			cfg.AMQPQueueType = qt
			cfg.ReconcileInterval = time.Hour // only the passes this test runs, and those a cancel asks for
			version := testenv.RabbitMQVersion(t, cfg.RabbitMQManagementURL)
			var listings atomic.Int32
			cfg.RabbitMQManagementURL = testenv.ManagementProxy(t, cfg.RabbitMQManagementURL, func(_ http.ResponseWriter, r *http.Request) bool {
				if strings.HasPrefix(r.URL.Path, "/api/queues/") && strings.Contains(r.URL.RawQuery, "columns=") {
					listings.Add(1)
				}
				return false
			})
			var rt *consumer.Runtime
			a := testenv.Start(t, cfg, fx.Populate(&rt))
			const n = 8
			ids := make([]uuid.UUID, n)
			for i := range ids {
				ids[i] = uuid.MustParse(a.CreateTenant(fmt.Sprintf("relisted-%s-%d", qt, i), 1))
				testenv.Eventually(t, 10*time.Second, func() bool { return rt.Workers(ids[i]) == 1 }, "tenant consumed")
			}
			inspections := func() float64 { return counter(t, a, "msgsvc_reconcile_queue_inspections_total") }
			require.NoError(t, rt.Reconcile(context.Background())) // every consumer runs: the passes below take turns
			before, listed := inspections(), listings.Load()
			for range 8 {
				require.NoError(t, rt.Reconcile(context.Background()))
			}
			require.Equal(t, float64(2*n), inspections()-before, "eight passes inspect each queue twice")
			reuses := qt == "classic" || !strings.HasPrefix(version, "3.")
			if reuses {
				own := listings.Load() - listed
				require.True(t, own == 2 || own == 3, "eight passes take two or three listings of their own, not %d (RabbitMQ %s, %s)", own, version, qt)
			} else {
				require.Equal(t, int32(8), listings.Load()-listed, "every pass takes its own listing (RabbitMQ %s, quorum)", version)
			}

			// A queue deleted by hand: classic queues and RabbitMQ 4.x cancel its consumer, and the pass that asks for
			// declares it again, whatever listing it takes.
			if !reuses {
				return
			}
			ch := testenv.AMQP(t, cfg.AMQPURL)
			_, err := ch.QueueDelete(consumer.QueueName(ids[0]), false, false, false)
			require.NoError(t, err)
			testenv.Eventually(t, 10*time.Second, func() bool {
				ok, _, consumers := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(ids[0]))
				return ok && consumers == 1
			}, "the deleted queue is declared again and consumed")
			id := uuid.MustParse(a.Publish(ids[0].String(), map[string]bool{"after": true}))
			testenv.Eventually(t, 10*time.Second, func() bool {
				return testenv.Count(t, a.DB(), "SELECT count(*) FROM messages WHERE id = $1", id) == 1
			}, "stored after the repair")
		})
	}
}

// TestPassesInTurnMakeWayForABurstOfCreations creates tenants one after another for longer than the reconciliation
// interval: the pass whose turn comes meanwhile waits for a pause in the creations (up to an interval), and runs
// once they stop; every tenant created meanwhile is consumed.
func TestPassesInTurnMakeWayForABurstOfCreations(t *testing.T) {
	const interval = 2 * time.Second
	cfg := testenv.Get(t).Config(t)
	cfg.ReconcileInterval = interval
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt))
	<-rt.Started()
	passes := func() float64 { return counter(t, a, "msgsvc_reconcile_runs_total") }

	before, began := passes(), time.Now()
	var ids []uuid.UUID
	for time.Since(began) < interval*3/2 { // the next turn comes within an interval, the wait ends after two
		ids = append(ids, uuid.MustParse(a.CreateTenant(fmt.Sprintf("burst-%d", len(ids)), 1)))
	}
	require.Equal(t, before, passes(), "no pass in its turn while %d creations went on for %s", len(ids), time.Since(began))
	testenv.Eventually(t, interval, func() bool { return passes() > before }, "a pass once the creations stopped")
	for _, id := range ids {
		testenv.Eventually(t, 10*time.Second, func() bool { return rt.Workers(id) == 1 }, "tenant %s consumed", id)
	}
}
