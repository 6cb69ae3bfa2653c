package faults

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

// stallingHandler is the real store handler, except that its first call (one delivery) waits until release is
// closed: one slow store, as a lock on a row or a batch in its retry budget makes it.
type stallingHandler struct {
	inner   consumer.Handler
	once    sync.Once
	entered chan struct{} // closed when the first call waits
	release chan struct{}
}

func (h *stallingHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	first := false
	h.once.Do(func() { first = true })
	if first {
		close(h.entered)
		<-h.release
	}
	return h.inner.Handle(ctx, tenant, ds)
}

// queueCounts returns a queue's ready and unacknowledged deliveries as rabbitmqctl counts them now (the
// management API's figures may be 5 s old).
func queueCounts(t *testing.T, s *testenv.Servers, vhost, queue string) (ready, unacked int, err error) {
	t.Helper()
	if s.Script == "" {
		t.Skip("servers are not local processes: rabbitmqctl is out of reach")
	}
	out, err := exec.Command(s.Script, "rabbitmqctl", "list_queues", "-p", vhost, "-q", "--no-table-headers",
		"name", "messages_ready", "messages_unacknowledged").CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("list queues: %w: %s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		var name string
		if _, err := fmt.Sscan(line, &name, &ready, &unacked); err == nil && name == queue {
			return ready, unacked, nil
		}
	}
	return 0, 0, fmt.Errorf("list queues: no queue %s in %q", queue, out)
}

// TestSlowStoreDoesNotHoldBackTheTenantsAcks stalls the store of one delivery of a two-worker tenant while 12 more
// of its messages are published one by one, three times its prefetch window (2 workers × 2). The other worker
// stores them all, and each is acked while the slow one is still unsettled: the queue shows exactly one
// unacknowledged delivery. Coalesced acks only up to the lowest unsettled delivery tag used to keep every later
// delivery unacked: the prefetch window filled with stored deliveries, and the tenant stopped (3 of the 12
// stored) though a worker was idle.
func TestSlowStoreDoesNotHoldBackTheTenantsAcks(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PrefetchPerWorker = 2
	h := &stallingHandler{entered: make(chan struct{}), release: make(chan struct{})}
	a := testenv.Start(t, cfg, fx.Decorate(func(inner consumer.Handler) consumer.Handler { h.inner = inner; return h }))
	var released sync.Once
	release := func() { released.Do(func() { close(h.release) }) }
	t.Cleanup(release) // before the application stops
	tenant := a.CreateTenant("slow-store", 2)
	db := a.DB()

	slow := a.Publish(tenant, map[string]string{"slow": "yes"})
	select {
	case <-h.entered:
	case <-time.After(15 * time.Second):
		t.Fatal("the first delivery never reached the store")
	}
	const others = 12
	ids := make([]uuid.UUID, others)
	for i := range ids {
		ids[i] = uuid.MustParse(a.Publish(tenant, map[string]int{"i": i}))
	}
	stored := func() int {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1)", ids)
	}
	if !testenv.Wait(15*time.Second, func() bool { return stored() == others }) {
		t.Fatalf("while one store was slow, %d of the tenant's %d other messages were stored: its acks were held back "+
			"and the prefetch window filled", stored(), others)
	}

	queue := consumer.QueueName(uuid.MustParse(tenant))
	vhost := config.VHost(cfg.AMQPURL)
	var ready, unacked int
	var err error
	if !testenv.Wait(15*time.Second, func() bool {
		ready, unacked, err = queueCounts(t, s, vhost, queue)
		return err == nil && ready == 0 && unacked == 1
	}) {
		t.Fatalf("with every other message stored, the queue holds %d ready and %d unacknowledged deliveries (%v); "+
			"want only the slow one unacknowledged", ready, unacked, err)
	}

	release()
	testenv.Eventually(t, 15*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(slow)) == 1
	}, "the slow message was not stored once its store went on")
}
