package faults

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// brokerOutage is one stop and start of the RabbitMQ application, as the test saw it.
type brokerOutage struct {
	stopping, stopped time.Time // rabbitmq-stop-app called, returned
	starting, started time.Time // rabbitmq-start-app called, returned
	ready             time.Time // /readyz answered 200 again
	resumed           time.Time // a publish started after ready was accepted
	unavailable       int       // publishes answered 503 between stopped and ready
}

func (o brokerOutage) String() string {
	return "broker down " + o.starting.Sub(o.stopping).Round(time.Millisecond).String() +
		", not ready " + o.ready.Sub(o.stopping).Round(time.Millisecond).String() +
		", publishing again after " + o.resumed.Sub(o.stopping).Round(time.Millisecond).String()
}

// TestBrokerRestartedTwiceMidStream stops and starts RabbitMQ twice while clients publish into three tenants.
// Publishes during an outage answer 503 within the confirm deadline, /readyz follows the broker, consumers
// come back by themselves, and every message answered 202 is stored exactly once.
func TestBrokerRestartedTwiceMidStream(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PublishConfirmTimeout = 2 * time.Second
	a := testenv.Start(t, cfg)
	tenants := []string{a.CreateTenant("restart-a", 2), a.CreateTenant("restart-b", 3), a.CreateTenant("restart-c", 1)}

	brokerUp := true
	t.Cleanup(func() { // runs before the application stops
		if !brokerUp {
			s.RunScript(t, "rabbitmq-start-app")
		}
	})

	st := startStream(t, a.URL, tenants, 4, 20*time.Millisecond)
	begin := time.Now()

	outage := func() brokerOutage {
		t.Helper()
		var o brokerOutage
		o.stopping = time.Now()
		s.RunScript(t, "rabbitmq-stop-app")
		brokerUp = false
		o.stopped = time.Now()
		testenv.Eventually(t, 15*time.Second, func() bool { return testenv.Status(a.URL+"/readyz") == http.StatusServiceUnavailable },
			"/readyz did not turn 503 with the broker stopped")
		testenv.Eventually(t, 15*time.Second, func() bool { return st.count(http.StatusServiceUnavailable, o.stopped) > 0 },
			"no publish answered 503 with the broker stopped")
		time.Sleep(3 * time.Second) // stay down a while: publishes keep failing fast, consumers keep reconnecting
		o.starting = time.Now()
		s.RunScript(t, "rabbitmq-start-app")
		brokerUp = true
		o.started = time.Now()
		testenv.Eventually(t, 60*time.Second, func() bool { return testenv.Status(a.URL+"/readyz") == http.StatusOK },
			"/readyz did not return to 200 after the broker restarted")
		o.ready = time.Now()
		testenv.Eventually(t, 30*time.Second, func() bool { return st.count(http.StatusAccepted, o.ready) > 0 },
			"publishing did not resume after the broker restarted")
		o.resumed = time.Now()
		return o
	}

	// A few seconds of traffic before, between and after the outages (each outage is itself 10-20 s long).
	time.Sleep(4 * time.Second)
	first := outage()
	time.Sleep(3 * time.Second)
	second := outage()
	time.Sleep(5 * time.Second)
	st.halt()

	answers := st.snapshot()
	limit := cfg.PublishConfirmTimeout + 3*time.Second
	slow := slowest(answers)
	require.LessOrEqual(t, slow.duration, limit, "a publish took %s (status %d) with PUBLISH_CONFIRM_TIMEOUT %s",
		slow.duration, slow.status, cfg.PublishConfirmTimeout)
	for i, o := range []*brokerOutage{&first, &second} {
		for _, an := range answers {
			// Without a broker nothing can be confirmed: no request made and answered while it was stopped got a 202.
			if !an.start.Before(o.stopped) && an.start.Add(an.duration).Before(o.starting) {
				require.NotEqual(t, http.StatusAccepted, an.status, "outage %d: a publish was accepted with the broker stopped", i+1)
			}
			if an.status == http.StatusServiceUnavailable && !an.start.Before(o.stopped) && an.start.Before(o.ready) {
				o.unavailable++
			}
		}
	}
	for _, an := range answers {
		require.Contains(t, []int{http.StatusAccepted, http.StatusServiceUnavailable}, an.status, "unexpected answer: %s", statuses(answers))
	}

	// Consumers come back by themselves, and drain what was accepted.
	waitConsumers(t, cfg.AMQPURL, tenants, 30*time.Second)
	acc := accepted(t, answers)
	o := settle(t, cfg.DatabaseURL, cfg.AMQPURL, tenants, acc, 90*time.Second)
	require.Zero(t, o.deadLettered)
	require.Zero(t, metric(t, a.URL, "msgsvc_messages_dead_lettered_total"))

	t.Logf("broker restarted twice: %s; answers %s; slowest answer %s (limit %s)", o, statuses(answers),
		slow.duration.Round(time.Millisecond), limit)
	t.Logf("redeliveries absorbed by idempotent storage: %.0f", metric(t, a.URL, "msgsvc_messages_duplicates_total"))
	for i, out := range []brokerOutage{first, second} {
		t.Logf("outage %d at %s: %s; %d publishes answered 503", i+1, out.stopping.Sub(begin).Round(time.Second), out, out.unavailable)
	}
}
