package faults

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// TestOneStuckQueueHoldsNoOtherTenantBack stops one tenant's classic queue from answering the broker's own
// calls while two other tenants go on. Everything that waits on that queue (reconciliation's passive declares
// share a few channels for all tenants) must give up on it alone, within a bound:
//   - publishes to the stuck tenant are answered 503 within PUBLISH_CONFIRM_TIMEOUT, and past
//     PUBLISH_MAX_UNCONFIRMED at once, nothing sent; the bystander tenant's are accepted and stored all along;
//   - reconciliation passes go on, and still mend another tenant: its queue deleted by hand is declared again and
//     served;
//   - a tenant deleted while its queue does not answer is answered 204 and gone (within about 12 s: its
//     consumer's stop waits for its channel's close, which RabbitMQ answers after its 15 s channel operation
//     timeout, no longer than the drain timeout), and its queue is removed once it answers again; a resize is
//     answered 200 likewise;
//   - msgsvc_amqp_unanswered_queues shows the queues the broker does not answer about;
//   - once the queue answers again, the stuck tenant is served: a publish retried with its Idempotency-Key is
//     stored once.
func TestOneStuckQueueHoldsNoOtherTenantBack(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPQueueType = "classic"
	cfg.PublishConfirmTimeout = 3 * time.Second
	cfg.ReconcileOrphanGrace = 5 * time.Second
	cfg.PublishMaxUnconfirmed = 8
	a := testenv.Start(t, cfg)
	stuck := a.CreateTenant("stuck", 2)
	bystander := a.CreateTenant("bystander", 2)
	mended := a.CreateTenant("mended", 2)
	gone := a.CreateTenant("gone", 1)
	db := a.DB()
	stored := func(tenant string) int {
		return testenv.Count(t, db, `SELECT count(*) FROM messages WHERE tenant_id = $1`, tenant)
	}
	for _, tn := range []string{stuck, bystander, mended, gone} {
		a.Publish(tn, map[string]any{"before": true})
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		return stored(stuck) == 1 && stored(bystander) == 1 && stored(mended) == 1 && stored(gone) == 1
	}, "the tenants' first messages were not stored")

	goneQueue := consumer.QueueName(uuid.MustParse(gone))
	resumeGone := s.SuspendQueue(t, cfg.AMQPURL, goneQueue)
	resume := s.SuspendQueue(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(stuck)))
	suspended := time.Now()

	// A deletion is answered, and the tenant is gone; its queue stays until the broker answers about it.
	began := time.Now()
	r0 := a.Do(http.MethodDelete, "/api/v1/tenants/"+gone, nil)
	require.Equal(t, http.StatusNoContent, r0.Status, "%s", r0.Body)
	deleteTook := time.Since(began)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+gone, nil).Status)

	// A resize is answered; the consumer follows once the queue answers.
	began = time.Now()
	r1 := a.Do(http.MethodPut, "/api/v1/tenants/"+stuck+"/config/concurrency", map[string]any{"workers": 3})
	require.Equal(t, http.StatusOK, r1.Status, "%s", r1.Body)
	resizeTook := time.Since(began)

	// The stuck tenant's publish gets an answer, and it says the message may still be stored.
	r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": stuck, "payload": map[string]any{"during": true}},
		"Idempotency-Key", "stuck-during")
	require.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)

	// Clients keep publishing to it: past PUBLISH_MAX_UNCONFIRMED envelopes waiting for their confirm, its
	// publishes are refused at once, nothing sent, so that the queue never blocks the publishing channels.
	var (
		flood     sync.WaitGroup
		mu        sync.Mutex
		floodSent int // batches handed to RabbitMQ: stored once the queue answers
		refused   int
	)
	for i := range 12 {
		flood.Add(1)
		go func() {
			defer flood.Done()
			r := a.Do(http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": stuck,
				"messages": []map[string]any{{"payload": map[string]any{"flood": i}}, {"payload": map[string]any{"flood": i}}}},
				"Idempotency-Key", fmt.Sprintf("flood-%d", i))
			mu.Lock()
			defer mu.Unlock()
			switch typ, _ := r.Map(t)["type"].(string); {
			case r.Status == http.StatusServiceUnavailable && strings.HasSuffix(typ, "/queue-not-confirming"):
				if !strings.Contains(string(r.Body), "was not sent") || r.Header.Get("Retry-After") == "" {
					t.Errorf("a refusal past PUBLISH_MAX_UNCONFIRMED without \"was not sent\" or Retry-After: %s", r.Body)
				}
				refused++
			case r.Status == http.StatusServiceUnavailable && strings.HasSuffix(typ, "/broker-unavailable"):
				floodSent++
			default:
				t.Errorf("a publish to the stuck tenant: %d %s", r.Status, r.Body)
			}
		}()
	}
	flood.Wait()
	require.Positive(t, refused, "no publish to the stuck tenant was refused past PUBLISH_MAX_UNCONFIRMED")
	require.LessOrEqual(t, floodSent, 7, "more envelopes than PUBLISH_MAX_UNCONFIRMED waited for their confirm")

	// Passes go on past the stuck queue's turn (every queue is inspected within inspectRotation passes), and
	// the bystander is served all along.
	passes := metric(t, a.URL, "msgsvc_reconcile_runs_total")
	sent := 1
	went := testenv.Wait(60*time.Second, func() bool {
		a.Publish(bystander, map[string]any{"n": sent})
		sent++
		return metric(t, a.URL, "msgsvc_reconcile_runs_total") >= passes+6
	})
	require.True(t, went, "reconciliation passes stopped while one tenant's queue does not answer (%v passes in %s)",
		metric(t, a.URL, "msgsvc_reconcile_runs_total")-passes, time.Since(suspended).Round(time.Second))
	testenv.Eventually(t, 30*time.Second, func() bool { return stored(bystander) == sent },
		"the bystander's messages were not stored while another tenant's queue was stuck")
	require.Equal(t, 2.0, metric(t, a.URL, "msgsvc_amqp_unanswered_queues"), "the two queues that do not answer")

	// A queue deleted by hand is declared again by a pass, and its tenant served.
	ch := testenv.AMQP(t, cfg.AMQPURL)
	_, err := ch.QueueDelete(consumer.QueueName(uuid.MustParse(mended)), false, false, false)
	require.NoError(t, err)
	testenv.Eventually(t, 60*time.Second, func() bool {
		ok, _, consumers := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(mended)))
		return ok && consumers == 1
	}, "a tenant's queue deleted by hand was not mended while another tenant's queue was stuck")
	a.Publish(mended, map[string]any{"after": true})
	testenv.Eventually(t, 30*time.Second, func() bool { return stored(mended) == 2 },
		"the mended tenant's message was not stored")

	resume()
	resumeGone()
	testenv.Eventually(t, 60*time.Second, func() bool {
		ok, _, _ := testenv.QueueState(t, cfg.AMQPURL, goneQueue)
		return !ok
	}, "the deleted tenant's queue was not removed once the broker answered about it")
	testenv.Eventually(t, 30*time.Second, func() bool { return metric(t, a.URL, "msgsvc_amqp_unanswered_queues") == 0 },
		"msgsvc_amqp_unanswered_queues stayed above 0 once the queues answered")
	testenv.Eventually(t, 60*time.Second, func() bool {
		r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": stuck, "payload": map[string]any{"during": true}},
			"Idempotency-Key", "stuck-during")
		return r.Status == http.StatusAccepted
	}, "the stuck tenant's publishes were not accepted after its queue answered again")
	a.Publish(stuck, map[string]any{"after": true})
	want := 3 + 2*floodSent
	require.True(t, testenv.Wait(60*time.Second, func() bool { return stored(stuck) == want }),
		"the stuck tenant's messages were not stored once after its queue answered again (%d of %d)", stored(stuck), want)
	time.Sleep(2 * time.Second)
	require.Equal(t, want, stored(stuck), "a message was stored twice")
	t.Logf("%d batches to the stuck tenant sent, %d refused at once;", floodSent, refused)
	t.Logf("stuck for %s; %d bystander messages stored meanwhile; the deletion took %s, the resize %s",
		time.Since(suspended).Round(time.Second), sent, deleteTook.Round(time.Millisecond), resizeTook.Round(time.Millisecond))
}

// TestShutdownWhileAQueueDoesNotAnswer stops the service while one tenant's classic queue does not answer and a
// reconciliation pass waits on it (without the management API every pass inspects every queue). The stop must
// end within SHUTDOWN_TIMEOUT: the pass is cancelled at once, and the stuck tenant's consumer stops within the
// drain timeout (its channel's close, which waits on the queue up to RabbitMQ's 15 s channel operation timeout,
// is not waited for longer). Before, the shutdown waited for the pass first and ran past its deadline.
func TestShutdownWhileAQueueDoesNotAnswer(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPQueueType = "classic"
	cfg.RabbitMQManagementURL = ""
	cfg.PublishConfirmTimeout = 2 * time.Second
	cfg.ShutdownTimeout = 20 * time.Second
	a := testenv.Start(t, cfg)
	stuck := a.CreateTenant("stuck", 2)
	other := a.CreateTenant("other", 2)
	a.Publish(other, map[string]any{"before": true})
	s.SuspendQueue(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(stuck)))
	r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": stuck, "payload": map[string]any{"x": 1}})
	require.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	require.True(t, testenv.Wait(15*time.Second, func() bool {
		return len(a.Logs.FilterMessageSnippet("the broker does not answer a call about a queue").All()) == 0 &&
			metric(t, a.URL, "msgsvc_reconcile_queue_inspections_total") > 0
	}))
	time.Sleep(3 * time.Second) // a pass is waiting on the queue's declare now (it gives up after 10 s)
	began := time.Now()
	require.NoError(t, a.Stop(), "the shutdown ran past SHUTDOWN_TIMEOUT while a queue did not answer")
	t.Logf("stopped in %s", time.Since(began).Round(time.Millisecond))
}

// TestAReplicasStuckEventQueueSlowsNoTenantOperation suspends the cluster-events queue of one replica (a classic
// queue: on a frozen node, or busy) while another replica creates and resizes tenants. When the relay published
// each event on the operation's path, through a fanout exchange that RabbitMQ confirms only once every queue took
// the event, each creation and resize on every replica took PUBLISH_CONFIRM_TIMEOUT. The relay now sends from an
// outbox per replica, so the operations answer as fast as without the fault, and the events reach the replica
// once its queue answers again.
func TestAReplicasStuckEventQueueSlowsNoTenantOperation(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PublishConfirmTimeout = 6 * time.Second
	a := testenv.Start(t, cfg)
	cfgB := testenv.AnotherReplica(cfg, "b")
	testenv.Start(t, cfgB)
	eventsQueue := testenv.AwaitEventsQueueConsumed(t, cfgB)
	resume := s.SuspendQueue(t, cfg.AMQPURL, eventsQueue)

	began := time.Now()
	for range 5 {
		id := a.CreateTenant("during", 1)
		r := a.Do(http.MethodPut, "/api/v1/tenants/"+id+"/config/concurrency", map[string]any{"workers": 2})
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	}
	took := time.Since(began)
	require.Less(t, took, cfg.PublishConfirmTimeout,
		"5 creations and 5 resizes waited for the confirm of events a stuck replica's queue does not take")

	resume()
	testenv.Eventually(t, 30*time.Second, func() bool {
		ok, messages, _ := testenv.QueueState(t, cfg.AMQPURL, eventsQueue)
		return ok && messages == 0
	}, "the events relayed meanwhile did not reach replica B once its queue answered")
	t.Logf("5 creations and 5 resizes took %s with replica B's events queue suspended", took.Round(time.Millisecond))
}

// TestAStuckQueueHoldsNoRepairBack: a reconciliation pass that waits on a queue that does not answer (its passive
// declare, up to broker.AnswerTimeout) must not hold back the repair another tenant asks for meanwhile. Here the
// other tenant's queue is deleted by hand while a pass waits on the stuck one: its consumer is cancelled, which
// asks for a pass, and the pass under way gives up its wait on the stuck queue at once (it has waited more than
// a second), so that the pass asked for declares the queue again and restarts the consumer within a second or
// two, where it used to come only once the stuck declare timed out, up to 10 s later. Both places a pass waits:
// the inspections in turn, paced after the repairs (with the management API's listing), and the inspections
// at once, before them (without it, every queue is inspected at once).
func TestAStuckQueueHoldsNoRepairBack(t *testing.T) {
	for _, c := range []struct {
		name       string
		management bool
	}{{"inspected in turn", true}, {"inspected at once", false}} {
		t.Run(c.name, func(t *testing.T) {
			s := testenv.Get(t)
			cfg := s.Config(t)
			cfg.AMQPQueueType = "classic"
			cfg.ReconcileInterval = time.Second
			if !c.management {
				cfg.RabbitMQManagementURL = ""
			}
			a := testenv.Start(t, cfg)
			stuck := a.CreateTenant("stuck", 1)
			victim := a.CreateTenant("victim", 1)
			victimQueue := consumer.QueueName(uuid.MustParse(victim))
			db := a.DB()
			a.Publish(victim, map[string]any{"before": true})
			testenv.Eventually(t, 30*time.Second, func() bool {
				return testenv.Count(t, db, `SELECT count(*) FROM messages WHERE tenant_id = $1`, victim) == 1
			}, "the victim's first message was not stored")

			resume := s.SuspendQueue(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(stuck)))
			defer resume()
			// A pass waits on the stuck queue once the passes, a second apart, stop for 2.5 s. Every queue is
			// inspected within inspectRotation (4) passes.
			var (
				last    = metric(t, a.URL, "msgsvc_reconcile_runs_total")
				changed = time.Now()
			)
			waiting := testenv.Wait(30*time.Second, func() bool {
				if n := metric(t, a.URL, "msgsvc_reconcile_runs_total"); n != last {
					last, changed = n, time.Now()
				}
				return time.Since(changed) >= 2500*time.Millisecond
			})
			require.True(t, waiting, "no pass waited on the stuck queue")

			ch := testenv.AMQP(t, cfg.AMQPURL)
			began := time.Now()
			_, err := ch.QueueDelete(victimQueue, false, false, false)
			require.NoError(t, err)
			var mended time.Duration
			require.True(t, testenv.Wait(30*time.Second, func() bool {
				ok, _, consumers := testenv.QueueState(t, cfg.AMQPURL, victimQueue)
				mended = time.Since(began)
				return ok && consumers == 1
			}), "the victim's queue was not declared again and consumed")
			// The stuck declare has 10 s; the repair comes within a second or two of the cancel.
			require.Less(t, mended, 5*time.Second, "the repair waited for the pass's declare on the stuck queue")
			a.Publish(victim, map[string]any{"after": true})
			testenv.Eventually(t, 30*time.Second, func() bool {
				return testenv.Count(t, db, `SELECT count(*) FROM messages WHERE tenant_id = $1`, victim) == 2
			}, "the victim's message after the repair was not stored")
			t.Logf("the victim's queue declared again and consumed %s after its deletion, while a pass waited on the stuck queue",
				mended.Round(time.Millisecond))
		})
	}
}
