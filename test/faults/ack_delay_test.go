package faults

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// TestAWaitingAckIsSentWithoutMoreTraffic publishes three messages, one at a time, to an idle tenant of a
// service whose acks wait CONSUMER_ACK_DELAY (300 ms here) for later stores, and publishes nothing after them.
// Their acks must still go once the delay passed: killed with SIGKILL a second later, the service leaves none of
// them for the broker to return to the queue (a return would be stored again as a redelivery by the next
// process, and counted as one).
func TestAWaitingAckIsSentWithoutMoreTraffic(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	p := startProc(t, "ackdelay", cfg, "CONSUMER_ACK_DELAY=300ms")
	tenant := createTenant(t, p.URL, "ackdelay", 1)
	queue := consumer.QueueName(uuid.MustParse(tenant))
	waitConsumers(t, cfg.AMQPURL, []string{tenant}, 30*time.Second)
	conn := testenv.Connect(t, cfg.DatabaseURL)
	for i := range 3 {
		status, raw, err := call(http.DefaultClient, http.MethodPost, p.URL+"/api/v1/messages",
			fmt.Appendf(nil, `{"tenant_id":%q,"payload":{"n":%d}}`, tenant, i))
		require.NoError(t, err)
		require.Equal(t, http.StatusAccepted, status, string(raw))
		testenv.Eventually(t, 10*time.Second, func() bool {
			return testenv.Count(t, conn, "SELECT count(*) FROM messages WHERE tenant_id = $1", tenant) == i+1
		}, "message %d was not stored", i)
	}
	time.Sleep(time.Second) // over three times the delay, with nothing published

	_, err := p.Signal(syscall.SIGKILL, 10*time.Second)
	require.NoError(t, err)
	// The broker returns a dead consumer's unacknowledged deliveries to the queue as it removes the consumer.
	testenv.Eventually(t, 10*time.Second, func() bool { _, _, c := testenv.QueueState(t, cfg.AMQPURL, queue); return c == 0 },
		"the killed process's consumer is still counted")
	time.Sleep(500 * time.Millisecond)
	_, ready, _ := testenv.QueueState(t, cfg.AMQPURL, queue)
	require.Zero(t, ready, "stored messages went back to the queue: their acks were still waiting a second after the last store")
}
