package consumer

import (
	"sync"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/acme/msgsvc/platform/metrics"
)

// Metrics are the consumer runtime's Prometheus series.
type Metrics struct {
	perTenant    bool
	running      prometheus.Gauge
	workers      *prometheus.GaugeVec
	inflight     *prometheus.GaugeVec
	retried      *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	requeued     *prometheus.CounterVec
	replayed     *prometheus.CounterVec
	restarts     *prometheus.CounterVec
	reconciles   prometheus.Counter
	inspected    prometheus.Counter
	repairs      *prometheus.CounterVec
	// startFailures counts consumers that could not start; failing is how many tenants have none for that reason.
	startFailures prometheus.Counter
	failing       prometheus.Gauge
	orphanCleanup prometheus.Gauge
	owned         prometheus.Gauge
	handovers     prometheus.Counter
	// handoversUnannounced counts consumers given up without the new owner's announcement (make-before-break
	// handover): its wait ended first.
	handoversUnannounced prometheus.Counter
	withoutSAC           prometheus.Gauge
	// startsInFlight is how many consumes run now; startConcurrency how many ran, this one included, as each
	// began; restartsLost counts consumers started again because their connection dropped.
	startsInFlight   prometheus.Gauge
	startConcurrency prometheus.Histogram
	restartsLost     prometheus.Counter
	// deadReasons are the reasons deadLettered has seen (forget deletes each tenant's series by them).
	reasonsMu   sync.Mutex
	deadReasons map[string]struct{}
}

// Reasons of msgsvc_messages_requeued_total.
const (
	requeueStopping    = "stopping"
	requeueRetryBudget = "retry_budget"
)

// NewMetrics registers the runtime's series on reg. With perTenant false the tenant label is "all".
func NewMetrics(reg prometheus.Registerer, perTenant bool) *Metrics {
	ns := metrics.Namespace
	m := &Metrics{
		perTenant:   perTenant,
		deadReasons: map[string]struct{}{},
		running:     prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "consumers_running", Help: "Tenant consumers running on this replica."}),
		workers:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "consumer_workers", Help: "Workers of each tenant's consumer on this replica."}, []string{"tenant"}),
		inflight:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "consumer_inflight", Help: "Deliveries being processed, by tenant."}, []string{"tenant"}),
		retried:     prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "messages_retried_total", Help: "Store attempts retried after a transient failure, by tenant."}, []string{"tenant"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "messages_dead_lettered_total",
			Help: "Deliveries sent to the dead-letter queue by this service, by tenant and reason."}, []string{"tenant", "reason"}),
		requeued: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "messages_requeued_total",
			Help: "Deliveries returned to their queue, by tenant and reason (retry budget spent, consumer stopping)."}, []string{"tenant", "reason"}),
		replayed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dead_letters_replayed_total",
			Help: "Dead-lettered messages moved back to their tenant's queue, by tenant."}, []string{"tenant"}),
		restarts:   prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "consumer_restarts_total", Help: "Consumers (re)started, by reason."}, []string{"reason"}),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "reconcile_runs_total", Help: "Reconciliation runs."}),
		inspected: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "reconcile_queue_inspections_total",
			Help: "Passive declares of owned tenant queues by reconciliation (each queue listed and consumed here every fourth run; the others every run)."}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reconcile_repairs_total", Help: "Repairs made by reconciliation, by kind."}, []string{"kind"}),
	}
	m.startFailures = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "consumer_start_failures_total",
		Help: "Tenant consumers (or their queues) that failed to start on this replica; reconciliation retries them."})
	m.failing = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "consumers_failing",
		Help: "Tenants this replica owns whose consumer failed to start at its last attempt."})
	m.orphanCleanup = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "orphan_queue_cleanup_enabled",
		Help: "1 when reconciliation can list queues through the management API to remove orphans, else 0."})
	m.owned = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "tenants_owned",
		Help: "Tenants placed on this replica at the last reconciliation."})
	m.handovers = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "consumer_handovers_total",
		Help: "Consumers this replica drained and stopped because another replica owns their tenant now."})
	m.handoversUnannounced = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "consumer_handovers_unannounced_total",
		Help: "Consumers this replica gave up (another replica owns their tenant, or it shuts down) before the new owner announced its consumer: the queue may have had no consumer for a moment."})
	m.withoutSAC = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "tenant_queues_without_single_active_consumer",
		Help: "Tenant queues declared by an older version without x-single-active-consumer (seen through the management API)."})
	m.startsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "consumer_starts_in_flight",
		Help: "Tenant consumers starting now (channel, qos and consume until the broker counts the consumer); at most 16."})
	m.startConcurrency = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "consumer_start_concurrency",
		Help:    "Tenant consumers starting at once, this one included, observed as each start begins.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}})
	m.restartsLost = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "consumer_connection_lost_restarts_total",
		Help: "Tenant consumers started again by the runtime because their pooled connection dropped."})
	reg.MustRegister(m.startsInFlight, m.startConcurrency, m.restartsLost)
	reg.MustRegister(m.startFailures, m.failing, m.orphanCleanup, m.owned, m.handovers, m.handoversUnannounced, m.withoutSAC)
	reg.MustRegister(m.running, m.workers, m.inflight, m.retried, m.deadLettered, m.requeued, m.replayed, m.restarts, m.reconciles, m.inspected, m.repairs)
	return m
}

func (m *Metrics) tenant(id uuid.UUID) string { return metrics.TenantLabel(m.perTenant, id) }

func (m *Metrics) forget(id uuid.UUID) {
	if !m.perTenant {
		return
	}
	// By each series' labels: DeletePartialMatch scans every series of the vector under its lock, so each deletion
	// cost time in the tenant count, and held back the workers' and the scrape's use of the vector meanwhile.
	t := id.String()
	m.workers.DeleteLabelValues(t)
	m.inflight.DeleteLabelValues(t)
	m.retried.DeleteLabelValues(t)
	m.replayed.DeleteLabelValues(t)
	m.requeued.DeleteLabelValues(t, requeueStopping)
	m.requeued.DeleteLabelValues(t, requeueRetryBudget)
	m.reasonsMu.Lock()
	for r := range m.deadReasons {
		m.deadLettered.DeleteLabelValues(t, r)
	}
	m.reasonsMu.Unlock()
}

// deadLetter returns the counter of tenant's dead letters for reason, remembering reason for forget.
func (m *Metrics) deadLetter(tenant, reason string) prometheus.Counter {
	m.reasonsMu.Lock()
	m.deadReasons[reason] = struct{}{}
	m.reasonsMu.Unlock()
	return m.deadLettered.WithLabelValues(tenant, reason)
}
