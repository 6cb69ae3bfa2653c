package messaging

import (
	"sync"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/acme/msgsvc/platform/metrics"
)

// Metrics are the messaging module's Prometheus series.
type Metrics struct {
	perTenant   bool
	published   *prometheus.CounterVec
	pubFailed   *prometheus.CounterVec
	stored      *prometheus.CounterVec
	duplicates  *prometheus.CounterVec
	latency     prometheus.Histogram
	rateLimited *prometheus.CounterVec
	perPublish  prometheus.Histogram
	perInsert   prometheus.Histogram
	stores      storeMetrics
	ratePeers   prometheus.Gauge
	refreshes   prometheus.Counter

	// publishedBy caches each tenant's messages_published_total series: a publish increments it without
	// formatting the tenant's id and looking the label up.
	publishedMu sync.RWMutex
	publishedBy map[uuid.UUID]prometheus.Counter
}

// publishedFor returns the tenant's messages_published_total series.
func (m *Metrics) publishedFor(id uuid.UUID) prometheus.Counter {
	m.publishedMu.RLock()
	c, ok := m.publishedBy[id]
	m.publishedMu.RUnlock()
	if ok {
		return c
	}
	c = m.published.WithLabelValues(m.tenant(id))
	m.publishedMu.Lock()
	if m.publishedBy == nil || len(m.publishedBy) >= 100_000 {
		m.publishedBy = map[uuid.UUID]prometheus.Counter{}
	}
	m.publishedBy[id] = c
	m.publishedMu.Unlock()
	return c
}

// NewMetrics registers the messaging series on reg. With perTenant false the tenant label is "all".
func NewMetrics(reg prometheus.Registerer, perTenant bool) *Metrics {
	m := &Metrics{
		perTenant: perTenant,
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace,
			Name: "messages_published_total", Help: "Messages accepted (confirmed by RabbitMQ), by tenant."}, []string{"tenant"}),
		pubFailed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace,
			Name: "messages_publish_failed_total", Help: "Publishes that failed, by reason."}, []string{"reason"}),
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace,
			Name: "messages_stored_total", Help: "Messages stored in PostgreSQL, by tenant."}, []string{"tenant"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace,
			Name: "messages_duplicates_total", Help: "Deliveries skipped because the message was already stored, by tenant."}, []string{"tenant"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metrics.Namespace,
			Name: "message_publish_to_store_seconds", Help: "Time from a message's creation at publish to its commit in PostgreSQL.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}),
	}
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace,
		Name: "messages_rate_limited_total", Help: "Messages refused with 429 by the tenant's publish rate limit, by tenant."}, []string{"tenant"})
	m.perPublish = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metrics.Namespace,
		Name: "messages_per_publish", Help: "Messages carried by one AMQP publish (several: an envelope of coalesced publishes or of a batch).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}})
	m.perInsert = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metrics.Namespace,
		Name: "messages_per_insert", Help: "Messages carried by one insert statement of the consumers (the stores of several deliveries, of any tenants, go together while earlier inserts run).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048}})
	m.stores = newStoreMetrics()
	m.ratePeers = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace,
		Name: "rate_limit_peers", Help: "Other replicas whose publish demand reports currently divide the tenants' rate limits with this one."})
	m.refreshes = prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace,
		Name: "view_refreshes_total", Help: "Re-reads of every tenant and its rate limit from the database (VIEW_REFRESH_INTERVAL)."})
	reg.MustRegister(m.refreshes, m.ratePeers, m.rateLimited, m.published, m.pubFailed, m.stored, m.duplicates, m.latency, m.perPublish, m.perInsert,
		m.stores.split, m.stores.alone, m.stores.conflicts)
	return m
}

func (m *Metrics) tenant(id uuid.UUID) string { return metrics.TenantLabel(m.perTenant, id) }

func (m *Metrics) forget(id uuid.UUID) {
	m.publishedMu.Lock()
	delete(m.publishedBy, id)
	m.publishedMu.Unlock()
	if m.perTenant {
		for _, v := range []*prometheus.CounterVec{m.published, m.stored, m.duplicates, m.rateLimited} {
			v.DeleteLabelValues(id.String())
		}
	}
}
