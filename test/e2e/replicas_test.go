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
	"github.com/acme/msgsvc/platform/cluster"
	"github.com/acme/msgsvc/platform/config"
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

// storeWatch wraps the store handler of every replica in a test and records, per tenant, how many store calls
// run at once across all of them, and how often each message was stored.
type storeWatch struct {
	inner map[string]consumer.Handler // by replica

	mu       sync.Mutex
	running  map[uuid.UUID]int
	maxSeen  map[uuid.UUID]int
	byRep    map[string]int
	storedBy map[string]int // message id → store calls that included it
}

func newStoreWatch() *storeWatch {
	return &storeWatch{inner: map[string]consumer.Handler{}, running: map[uuid.UUID]int{}, maxSeen: map[uuid.UUID]int{},
		byRep: map[string]int{}, storedBy: map[string]int{}}
}

// decorate returns the fx option that wraps replica's handler.
func (w *storeWatch) decorate(replica string) fx.Option {
	return fx.Decorate(func(h consumer.Handler) consumer.Handler {
		w.mu.Lock()
		w.inner[replica] = h
		w.mu.Unlock()
		return watchedHandler{w: w, replica: replica}
	})
}

type watchedHandler struct {
	w       *storeWatch
	replica string
}

func (h watchedHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	w := h.w
	w.mu.Lock()
	w.running[tenant]++
	w.maxSeen[tenant] = max(w.maxSeen[tenant], w.running[tenant])
	inner := w.inner[h.replica]
	w.mu.Unlock()
	time.Sleep(2 * time.Millisecond) // widen the window in which an overlap would show
	errs := inner.Handle(ctx, tenant, ds)
	w.mu.Lock()
	w.running[tenant]--
	w.byRep[h.replica] += len(ds)
	for i, d := range ds {
		if errs[i] == nil {
			w.storedBy[d.MessageId]++
		}
	}
	w.mu.Unlock()
	return errs
}

// TestTwoReplicasShareTheWork runs tenants with one worker each under steady traffic while a second replica
// joins and later stops: each tenant is consumed by one replica at a time (the instrumented store handler never
// sees two store calls of a tenant at once across the replicas), both replicas own tenants while both run, and
// every accepted message is stored exactly once.
func TestTwoReplicasShareTheWork(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReplicaHeartbeatInterval = 300 * time.Millisecond
	cfg.ReplicaTTL = 3 * time.Second
	cfg.ConsumerBatchSize = 4
	watch := newStoreWatch()
	var rtA, rtB *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rtA), watch.decorate("a"))
	tenants := createTenants(t, a, "shared", 12, 4)

	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted []string
	)
	for c := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				tenant := tenants[(c*5+i)%len(tenants)]
				r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]int{"c": c, "i": i}})
				if r.Status == http.StatusAccepted {
					mu.Lock()
					accepted = append(accepted, r.Map(t)["id"].(string))
					mu.Unlock()
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}

	time.Sleep(time.Second)
	cfgB := testenv.AnotherReplica(cfg, "b")
	b := testenv.Start(t, cfgB, fx.Populate(&rtB), watch.decorate("b"))
	owned := func(rt *consumer.Runtime) (n int) {
		for _, id := range tenants {
			if rt.Workers(uuid.MustParse(id)) == 1 {
				n++
			}
		}
		return n
	}
	testenv.Eventually(t, 15*time.Second, func() bool {
		na, nb := owned(rtA), owned(rtB)
		return na > 0 && nb > 0 && na+nb == len(tenants)
	}, "the tenants are shared: each consumed by one replica (a %d, b %d)", owned(rtA), owned(rtB))
	for _, id := range tenants {
		st := a.Do(http.MethodGet, "/api/v1/tenants/"+id, nil).Map(t)["consumer"].(map[string]any)
		require.Equal(t, true, st["running"], "status of %s: %v", id, st)
		require.Contains(t, []string{cfg.ReplicaID, cfgB.ReplicaID}, st["replica"])
	}
	// A tenant created on B is consumed by its owner only.
	t2 := uuid.MustParse(b.CreateTenant("from-b", 2))
	testenv.Eventually(t, 5*time.Second, func() bool { return rtA.Workers(t2)+rtB.Workers(t2) == 2 }, "the new tenant runs once")
	require.True(t, rtA.Workers(t2) == 0 || rtB.Workers(t2) == 0, "the new tenant runs on one replica")

	time.Sleep(time.Second)
	require.NoError(t, b.Stop()) // B leaves: its tenants drain and move back to A
	testenv.Eventually(t, 15*time.Second, func() bool { return owned(rtA) == len(tenants) }, "A took every tenant back")
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	db := a.DB()
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[])", accepted) == len(accepted)
	}, "all %d accepted messages stored", len(accepted))
	watch.mu.Lock()
	defer watch.mu.Unlock()
	for _, id := range tenants {
		require.Equal(t, 1, watch.maxSeen[uuid.MustParse(id)], "tenant %s had store calls running at once", id)
	}
	twice := 0
	for _, n := range watch.storedBy {
		if n > 1 {
			twice++
		}
	}
	require.Zero(t, twice, "messages stored more than once")
	require.Positive(t, watch.byRep["a"])
	require.Positive(t, watch.byRep["b"])
	t.Logf("%d messages, stored by a: %d, by b: %d", len(accepted), watch.byRep["a"], watch.byRep["b"])
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
	awaitConsumed(t, cfg.AMQPURL, tid, 10*time.Second, "queue restored with its consumer")
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

	// A partition whose tenant row is gone is a deletion in progress (its owner may still be storing into it)
	// until it has been so for RECONCILE_ORPHAN_GRACE; then it is a leftover and dropped.
	other := uuid.MustParse(a.CreateTenant("orphan-partition", 1))
	_, err = db.Exec(context.Background(), `DELETE FROM tenants WHERE id = $1`, other)
	require.NoError(t, err)
	gone := time.Now()
	partitionExists := func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM pg_class WHERE relname = $1", messaging.PartitionName(other)) == 1
	}
	testenv.Eventually(t, 15*time.Second, func() bool { return !partitionExists() }, "orphan partition dropped")
	require.GreaterOrEqual(t, time.Since(gone), cfg.ReconcileOrphanGrace, "the partition was dropped before the grace")
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

// TestReconcileInspectsInTurns: a reconciliation pass passively declares only a quarter of the owned queues
// that the management API lists and whose consumer runs (each in turn, every one within four passes), and at
// once a queue that the listing does not show: one deleted behind the service's back is declared again and
// consumed at the next pass.
func TestReconcileInspectsInTurns(t *testing.T) {
	const n = 16
	p := startInspected(t, "turns", n)
	a, cfg, ids, rt := p.app, p.app.Config, p.ids, p.rt
	require.Equal(t, float64(n), p.inspected(4), "four passes inspect each listed and consumed queue once")

	victim := ids[0]
	ch := testenv.AMQP(t, cfg.AMQPURL)
	_, err := ch.QueueDelete(consumer.QueueName(victim), false, false, false)
	require.NoError(t, err)
	require.NoError(t, rt.Reconcile(context.Background()))
	awaitConsumed(t, cfg.AMQPURL, victim, 10*time.Second, "declared again and consumed at the next pass")
	id := uuid.MustParse(a.Publish(victim.String(), map[string]bool{"after": true}))
	awaitStored(t, a.DB(), []uuid.UUID{id}, 10*time.Second, "stored after the repair")
}

// TestConsumersStartedAgainAfterAConnectionDropAreInspectedAtEveryPass: once the pooled connection carrying the
// tenants' consumers drops and they start again on a new one, each of the next eight passes inspects every one of
// their queues (a failover can leave such a consume without a consumer on the queue, see inspectNeeded), and
// after that the passes take their turns again (a quarter each).
func TestConsumersStartedAgainAfterAConnectionDropAreInspectedAtEveryPass(t *testing.T) {
	const n = 8
	p := startInspected(t, "recheck", n)
	a, cfg := p.app, p.app.Config
	require.Equal(t, float64(n), p.inspected(4), "four passes inspect each queue once")

	closeConnection(t, testenv.Get(t), cfg, "msgsvc-"+cfg.ReplicaID+"-consumer-1")
	testenv.Eventually(t, 30*time.Second, func() bool {
		return metricValue(t, scrape(t, a.URL), "msgsvc_consumer_connection_lost_restarts_total") == n
	}, "every consumer started again after its connection dropped")
	for _, id := range p.ids {
		awaitConsumed(t, cfg.AMQPURL, id, 10*time.Second, "tenant consumed again")
	}
	require.Equal(t, float64(8*n), p.inspected(8), "the eight passes after the drop inspect every restarted queue")
	require.Equal(t, float64(n), p.inspected(4), "then the passes take their turns again")
}

// inspectedApp is a service whose reconciliation runs only when a test asks, with n tenants consumed.
type inspectedApp struct {
	t   *testing.T
	app *testenv.App
	rt  *consumer.Runtime
	ids []uuid.UUID
}

func startInspected(t *testing.T, prefix string, n int) *inspectedApp {
	t.Helper()
	cfg := testenv.Get(t).Config(t)
	cfg.ReconcileInterval = time.Hour // only the passes the test runs
	p := &inspectedApp{t: t, ids: make([]uuid.UUID, n)}
	p.app = testenv.Start(t, cfg, fx.Populate(&p.rt))
	for i := range p.ids {
		p.ids[i] = uuid.MustParse(p.app.CreateTenant(fmt.Sprintf("%s-%d", prefix, i), 1))
	}
	for _, id := range p.ids {
		awaitConsumed(t, cfg.AMQPURL, id, 10*time.Second, "tenant consumed")
	}
	return p
}

// inspected runs passes reconciliation passes and returns how many queues they inspected.
func (p *inspectedApp) inspected(passes int) float64 {
	t := p.t
	before := metricValue(t, scrape(t, p.app.URL), "msgsvc_reconcile_queue_inspections_total")
	for range passes {
		require.NoError(t, p.rt.Reconcile(context.Background()))
	}
	return metricValue(t, scrape(t, p.app.URL), "msgsvc_reconcile_queue_inspections_total") - before
}

// A tenant's queue deleted by hand (an operator, a script) and declared again at once: the tenant is served
// again, whatever the queue type, and the other tenants throughout.
//   - A classic queue's deletion cancels the consumer (basic.cancel): the runtime closes its channel and asks for
//     a reconciliation pass at once (the test runs none itself), which starts it again on a new channel.
//   - A quorum queue's deletion on RabbitMQ 3.10 cancels nothing, and the new queue gets the old channel's
//     consumer back, which the client no longer serves: a message published then waits on it, unacknowledged.
//     Reconciliation finds it in the broker's statistics (findUnserved) and starts the consumer again. The passes
//     run here back to back; with the defaults it takes up to 2 × inspectRotation × RECONCILE_INTERVAL (4 min).
func TestQueueDeclaredAgainByHandIsServed(t *testing.T) {
	s := testenv.Get(t)
	// "quorum without management API": the statistics listing (findUnserved) is not there, and the passes must
	// see the consumer stalled by the passive declares alone (findStalled): more messages than its prefetch, so
	// that some stay ready.
	for _, mode := range []string{"classic", "quorum", "quorum without management API"} {
		t.Run(mode, func(t *testing.T) {
			qt, _, bare := strings.Cut(mode, " ")
			cfg := s.Config(t)
			cfg.AMQPQueueType = qt
			cfg.ReconcileInterval = time.Hour // only the passes this test runs
			if bare {
				cfg.RabbitMQManagementURL = ""
			}
			var rt *consumer.Runtime
			a := testenv.Start(t, cfg, fx.Populate(&rt))
			ids := make([]uuid.UUID, 4)
			for i := range ids {
				ids[i] = uuid.MustParse(a.CreateTenant(fmt.Sprintf("redeclared-%s-%d", qt, i), 1))
			}
			ch := testenv.AMQP(t, cfg.AMQPURL)
			db := a.DB()
			defer func() {
				if t.Failed() { // what the broker saw, for a failure that shows only on some runs
					for _, id := range ids {
						ok, msgs, consumers := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(id))
						t.Logf("tenant %s: queue exists %v, %d messages ready, %d consumers", id, ok, msgs, consumers)
					}
				}
			}()
			victims := ids[:3]
			if qt == "quorum" {
				victims = ids[:1] // on 3.10 it takes unservedSettle twice
			}
			for _, victim := range victims {
				awaitConsumed(t, cfg.AMQPURL, victim, 10*time.Second, "tenant consumed")
				_, err := ch.QueueDelete(consumer.QueueName(victim), false, false, false)
				require.NoError(t, err)
				require.NoError(t, rt.DeclareTopology(context.Background(), victim))
				n := 1
				if bare {
					n = 50 // a prefetch of 32 (one worker)
				}
				sent := make([]uuid.UUID, n)
				for i := range sent {
					sent[i] = uuid.MustParse(a.Publish(victim.String(), map[string]int{"after": i}))
				}
				stored := func() bool {
					return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1)", sent) == n
				}
				if qt == "classic" {
					awaitStored(t, db, sent, 10*time.Second, "stored without a pass of the test's")
					continue
				}
				testenv.Eventually(t, 60*time.Second, func() bool {
					if stored() {
						return true
					}
					require.NoError(t, rt.Reconcile(context.Background()))
					time.Sleep(200 * time.Millisecond)
					return false
				}, "stored after reconciliation passes")
			}
			other := uuid.MustParse(a.Publish(ids[3].String(), map[string]bool{"bystander": true}))
			awaitStored(t, db, []uuid.UUID{other}, 10*time.Second, "the other tenant is served throughout")
		})
	}
}

// TestATenantCreatedBeforeItsOwnerWasSeenIsServed creates tenants on replica A in the moment after replica B
// joined and before A's next heartbeat showed it B: A relays a creation only to the replicas it sees, so B never
// hears of those it owns, and reconciliation (RECONCILE_INTERVAL, 10 minutes here) is far off. A starts their
// consumers itself; once it sees B it hands them over and tells B so, and B must start them at once (make-before-
// break: A drains only after B announced its consumers) and store what is published to them.
func TestATenantCreatedBeforeItsOwnerWasSeenIsServed(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	// A sees a new replica up to 4 s after its first heartbeat: the window the creations fall in.
	cfg.ReplicaHeartbeatInterval = 4 * time.Second
	cfg.ConsumerDrainTimeout = 2 * time.Second
	cfg.ReplicaTTL = 20 * time.Second
	cfg.ReconcileInterval = 10 * time.Minute
	var (
		rtA  *consumer.Runtime
		memA *cluster.Membership
	)
	a := testenv.Start(t, cfg, fx.Populate(&rtA, &memA))
	<-rtA.Started()

	var (
		rtB    *consumer.Runtime
		memB   *cluster.Membership
		cfgB   config.Config
		unseen []uuid.UUID // created on A while A did not see B, and owned by B
	)
	// The window may close before a tenant B owns was created in it (B's start fell just before A's heartbeat):
	// B leaves and another replica joins.
	for attempt := 0; attempt < 3 && len(unseen) == 0; attempt++ {
		cfgB = testenv.AnotherReplica(cfg, fmt.Sprintf("b%d", attempt))
		b := testenv.Start(t, cfgB, fx.Populate(&rtB, &memB))
		<-rtB.Started() // B's only pass has listed the tenants: it hears of new ones by the relay only
		for i := 0; i < 40 && len(memA.Members()) == 1 && len(unseen) < 3; i++ {
			id := uuid.MustParse(a.CreateTenant(fmt.Sprintf("unseen-%d-%d", attempt, i), 2))
			if len(memA.Members()) == 1 && cluster.Owner(memB.Live(), id) == cfgB.ReplicaID {
				unseen = append(unseen, id) // its creation was relayed to no one
			}
		}
		if len(unseen) == 0 {
			require.NoError(t, b.Stop())
			testenv.Eventually(t, 15*time.Second, func() bool { return len(memA.Members()) == 1 }, "A still sees B")
		}
	}
	require.NotEmpty(t, unseen, "no tenant owned by B was created before A saw B, in 3 attempts")
	created := time.Now()
	var sawB time.Time // when A first saw B, as the polls below find it

	// A hands them over when it sees B (within its heartbeat interval), and B starts them well before A's
	// HandoverWait (2 × 4 s + 5 s) would have A drain them unannounced.
	testenv.Eventually(t, 8*time.Second, func() bool {
		if sawB.IsZero() && len(memA.Members()) == 2 {
			sawB = time.Now()
		}
		for _, id := range unseen {
			if rtB.Workers(id) != 2 || rtA.Workers(id) != 0 {
				return false
			}
		}
		return true
	}, "B does not serve the %d tenants created before A saw it", len(unseen))
	served := time.Now()
	var ids []string
	for _, id := range unseen {
		r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": id.String(), "payload": map[string]string{"after": "handover"}})
		require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
		ids = append(ids, r.Map(t)["id"].(string))
	}
	db := a.DB()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[])", ids) == len(ids)
	}, "the messages published to the handed-over tenants are stored")
	t.Logf("%d tenants created before A saw B were served by B %s after the last creation, %s after A saw B",
		len(unseen), served.Sub(created).Round(10*time.Millisecond), served.Sub(sawB).Round(10*time.Millisecond))
}
