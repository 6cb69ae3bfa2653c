package cluster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/acme/msgsvc/platform/metrics"
)

// registerMetrics exports the membership's lease and live set, read at scrape time.
func registerMetrics(reg prometheus.Registerer, m *Membership) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "replica_lease_held",
			Help: "1 while this replica holds its membership lease and owns tenants; 0 while its heartbeats fail or " +
				"its consumer connections have been down for REPLICA_BROKER_GRACE."},
			func() float64 {
				if m.Holds() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "replicas_live",
			Help: "Replicas tenants are placed on, as this replica sees them (itself included while it holds its lease)."},
			func() float64 { return float64(len(m.Live())) }),
	)
}

// registerRelayMetrics registers the relay's counter of events dropped.
func registerRelayMetrics(reg prometheus.Registerer) prometheus.Counter {
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "cluster_events_dropped_total",
		Help: "Tenant events not relayed to another replica: its outbox was full, or RabbitMQ did not confirm them " +
			"(its events queue does not answer, or the broker is down); that replica catches up at its next reconciliation."})
	reg.MustRegister(dropped)
	return dropped
}
