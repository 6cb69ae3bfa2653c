package consumer

import (
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
)

// tenantSeries counts the series of reg that carry tenant's label.
func tenantSeries(t testing.TB, reg *prometheus.Registry, tenant string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" && l.GetValue() == tenant {
					n++
				}
			}
		}
	}
	return n
}

// touch gives tenant a series in every per-tenant vector, with dead letters of the given reasons.
func touch(m *Metrics, tenant string, reasons ...string) {
	m.workers.WithLabelValues(tenant).Set(2)
	m.inflight.WithLabelValues(tenant).Inc()
	m.retried.WithLabelValues(tenant).Inc()
	m.replayed.WithLabelValues(tenant).Inc()
	m.requeued.WithLabelValues(tenant, requeueStopping).Inc()
	m.requeued.WithLabelValues(tenant, requeueRetryBudget).Inc()
	for _, r := range reasons {
		m.deadLetter(tenant, r).Inc()
	}
}

// A deleted tenant's series all go, whatever reasons its dead letters had (the broker's, or an older version's
// header), and no other tenant's series goes with them.
func TestForgetRemovesEveryOneOfTheTenantsSeriesAndNoOther(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, true)
	gone, kept := uuid.New(), uuid.New()
	touch(m, gone.String(), ReasonUndecodable, ReasonRetriesExhausted, "expired", "an-older-versions-reason")
	touch(m, kept.String(), ReasonUndecodable, "maxlen")
	if n := tenantSeries(t, reg, gone.String()); n != 10 {
		t.Fatalf("the tenant has %d series before, want 10", n)
	}
	m.forget(gone)
	if n := tenantSeries(t, reg, gone.String()); n != 0 {
		t.Errorf("%d series of the deleted tenant remain", n)
	}
	if n := tenantSeries(t, reg, kept.String()); n != 8 {
		t.Errorf("the other tenant has %d series, want 8", n)
	}
}

// BenchmarkForget measures the removal of one tenant's series beside 1,000 and 10,000 other tenants': it must
// not grow with their number (each deletion pays it, under the vectors' locks).
func BenchmarkForget(b *testing.B) {
	for _, others := range []int{1_000, 10_000} {
		b.Run(fmt.Sprintf("beside-%d", others), func(b *testing.B) {
			m := NewMetrics(prometheus.NewRegistry(), true)
			for range others {
				touch(m, uuid.NewString(), ReasonUndecodable)
			}
			ids := make([]uuid.UUID, b.N)
			for i := range ids {
				ids[i] = uuid.New()
				touch(m, ids[i].String(), ReasonUndecodable)
			}
			b.ResetTimer()
			for i := range b.N {
				m.forget(ids[i])
			}
		})
	}
}
