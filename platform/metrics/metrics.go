// Package metrics owns the service's Prometheus registry and serves it at /metrics.
package metrics

import (
	"net/http"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/fx"
)

// Namespace prefixes every metric the service exports.
const Namespace = "msgsvc"

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves the registry in the Prometheus exposition format.
//
//	@Summary		Prometheus metrics
//	@ID				metrics
//	@Description	The service's metrics (msgsvc_*), Go runtime and process metrics, in the Prometheus text exposition format.
//	@Tags			operations
//	@Produce		plain
//	@Success		200	{string}	string	"Prometheus text exposition format"
//	@Failure		400	{string}	string	"a malformed HTTP request (Go's HTTP server answers it before any handler, on every route)"
//	@Security
//	@Router			/metrics [get]
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// Module provides the registry as both *prometheus.Registry and prometheus.Registerer.
var Module = fx.Module("metrics",
	fx.Provide(
		NewRegistry,
		func(r *prometheus.Registry) prometheus.Registerer { return r },
	),
)

// TenantLabel is the value of a metric's tenant label: the tenant's id, or "all" when per-tenant series are
// turned off (METRICS_PER_TENANT=false), so that the number of series does not grow with the tenants.
func TenantLabel(perTenant bool, id uuid.UUID) string {
	if perTenant {
		return id.String()
	}
	return "all"
}
