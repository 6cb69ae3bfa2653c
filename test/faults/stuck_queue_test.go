package faults

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// suspendQueue stops the Erlang process of a classic queue (sys:suspend) until resume is called: the queue's
// node and every other queue go on, but anything that needs the queue's answer (a declare, a passive declare, a
// consumer's cancel, a delete, a publish's confirm) waits, as when the queue's process is busy for minutes
// (a long backlog paged from disk) or its node is frozen while the node the client talks to is not. A quorum
// queue answers a passive declare from its member's local state, so this is a classic queue's failure.
func suspendQueue(t *testing.T, s *testenv.Servers, vhost, queue string) (resume func()) {
	t.Helper()
	pid := fmt.Sprintf(`begin {ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<%q>>, queue, <<%q>>)), amqqueue:get_pid(Q) end`,
		vhost, queue)
	s.RunScript(t, "rabbitmqctl", "eval", "sys:suspend("+pid+").")
	done := false
	resume = func() {
		if !done {
			done = true
			s.RunScript(t, "rabbitmqctl", "eval", "sys:resume("+pid+").")
		}
	}
	t.Cleanup(resume)
	return resume
}

// TestOneStuckQueueHoldsNoOtherTenantBack stops one tenant's classic queue from answering the broker's own
// calls while two other tenants go on. Everything that waits on that queue (reconciliation's passive declares
// share a few channels for all tenants) must give up on it alone, within a bound:
//   - publishes to the stuck tenant are answered 503 within PUBLISH_CONFIRM_TIMEOUT, and the bystander tenant's
//     are accepted and stored all along;
//   - reconciliation passes go on, and still mend another tenant: its queue deleted by hand is declared again and
//     served;
//   - a tenant deleted while its queue does not answer is deleted at once, and its queue is removed once it
//     answers again;
//   - msgsvc_amqp_unanswered_queues shows the queues the broker does not answer about;
//   - once the queue answers again, the stuck tenant is served: a publish retried with its Idempotency-Key is
//     stored once.
func TestOneStuckQueueHoldsNoOtherTenantBack(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPQueueType = "classic"
	cfg.PublishConfirmTimeout = 3 * time.Second
	cfg.ReconcileOrphanGrace = 5 * time.Second
	a := testenv.Start(t, cfg)
	u, err := url.Parse(cfg.AMQPURL)
	require.NoError(t, err)
	vhost := strings.TrimPrefix(u.Path, "/")
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
	resumeGone := suspendQueue(t, s, vhost, goneQueue)
	resume := suspendQueue(t, s, vhost, consumer.QueueName(uuid.MustParse(stuck)))
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
	_, err = ch.QueueDelete(consumer.QueueName(uuid.MustParse(mended)), false, false, false)
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
	require.True(t, testenv.Wait(60*time.Second, func() bool { return stored(stuck) == 3 }),
		"the stuck tenant's messages were not stored once after its queue answered again (%d of 3)", stored(stuck))
	time.Sleep(2 * time.Second)
	require.Equal(t, 3, stored(stuck), "a message was stored twice")
	t.Logf("stuck for %s; %d bystander messages stored meanwhile; the deletion took %s, the resize %s",
		time.Since(suspended).Round(time.Second), sent, deleteTook.Round(time.Millisecond), resizeTook.Round(time.Millisecond))
}
