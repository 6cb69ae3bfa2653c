package faults

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// TestConnectionsClosedTwiceMidStream closes every AMQP connection of the service twice, with the broker up (what
// an operator does from the management UI, or what a load balancer in front of a cluster does), while clients
// publish into three tenants. Publishes in flight or arriving during the reconnect wait for the new connection
// and are sent again within PUBLISH_CONFIRM_TIMEOUT: not one of them fails, and every message answered 202 is
// stored exactly once.
func TestConnectionsClosedTwiceMidStream(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPReconnectInterval = 100 * time.Millisecond
	a := testenv.Start(t, cfg)
	tenants := []string{a.CreateTenant("blip-a", 2), a.CreateTenant("blip-b", 3), a.CreateTenant("blip-c", 1)}
	u, err := url.Parse(cfg.AMQPURL)
	require.NoError(t, err)
	vhost := strings.TrimPrefix(u.Path, "/")

	st := startStream(t, a.URL, tenants, 8, 5*time.Millisecond)
	var closes []time.Time
	for range 2 {
		time.Sleep(2 * time.Second)
		closes = append(closes, time.Now())
		s.RunScript(t, "rabbitmqctl", "close_all_connections", "-p", vhost, "test: connection blip")
	}
	time.Sleep(2 * time.Second) // the window in which `during` counts publishes after the second close
	st.halt()

	answers := st.snapshot()
	for _, an := range answers {
		require.Equal(t, http.StatusAccepted, an.status, "a publish failed across the connection closes: %s", statuses(answers))
	}
	during := 0
	for _, an := range answers {
		for _, c := range closes {
			if d := an.start.Sub(c); d > -100*time.Millisecond && d < 2*time.Second {
				during++
				break
			}
		}
	}
	require.Positive(t, during, "no publish was made around the connection closes")
	waitConsumers(t, cfg.AMQPURL, tenants, 30*time.Second)
	o := settle(t, cfg.DatabaseURL, cfg.AMQPURL, tenants, accepted(t, answers), 60*time.Second)
	require.Zero(t, o.deadLettered)
	slow := slowest(answers)
	t.Logf("connections closed twice: %s; answers %s (%d made within 2 s of a close); slowest %s", o, statuses(answers),
		during, slow.duration.Round(time.Millisecond))
}
