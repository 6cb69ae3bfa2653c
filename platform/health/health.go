// Package health holds the service's probes: liveness (GET /healthz), which checks nothing, and readiness
// (GET /readyz), which runs every readiness check. Platform packages contribute their checks to the
// "readiness" value group with AsCheck; the HTTP server mounts the probes with the checks it collects through
// Checks. The package imports no other platform package but problem, so that database and broker can offer
// their checks without depending on the HTTP server.
package health

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/platform/problem"
)

// Check is a named readiness check; it answers nil when its dependency is usable.
type Check struct {
	Name  string
	Check func(ctx context.Context) error
}

// AsCheck annotates a constructor of a Check so that it joins the "readiness" value group.
func AsCheck(f any) any {
	return fx.Annotate(f, fx.ResultTags(`group:"readiness"`))
}

// Checks collects every Check of the "readiness" value group; make it a field of an fx.In parameter struct.
type Checks struct {
	fx.In
	All []Check `group:"readiness"`
}

// readyTimeout bounds one readiness answer: every check shares it.
const readyTimeout = 2 * time.Second

// Liveness is the answer of GET /healthz.
type Liveness struct {
	Status string `json:"status" example:"ok"`
}

// Readiness is the answer of GET /readyz when every dependency is usable.
type Readiness struct {
	Status string `json:"status" example:"ready"`
	// Checks maps each readiness check to "ok" (or "down: reason" in the 503 answer's errors).
	Checks map[string]string `json:"checks" example:"database:ok,broker:ok"`
}

// Probes answers the liveness and readiness probes.
type Probes struct {
	checks []Check
}

// New returns the probes; readiness runs checks in order.
func New(checks []Check) *Probes {
	return &Probes{checks: checks}
}

// Register mounts GET /healthz and GET /readyz on r.
func (p *Probes) Register(r chi.Router) {
	r.Get("/healthz", p.Live)
	r.Get("/readyz", p.Ready)
}

// Live answers 200 while the process runs.
//
//	@Summary		Liveness probe
//	@ID				healthz
//	@Description	Answers 200 while the process runs; it checks no dependency.
//	@Tags			operations
//	@Produce		json
//	@Success		200	{object}	Liveness
//	@Failure		400	{string}	string	"a malformed HTTP request (Go's HTTP server answers it before any handler, on every route)"
//	@Security
//	@Router			/healthz [get]
func (p *Probes) Live(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, Liveness{Status: "ok"})
}

// Ready answers 200 when every readiness check passes within 2 s, else 503 naming what is down.
//
//	@Summary		Readiness probe
//	@ID				readyz
//	@Description	Answers 200 only when PostgreSQL and RabbitMQ answer and every migration is applied, else 503 with a problem naming each check that is down in errors.
//	@Tags			operations
//	@Produce		json
//	@Success		200	{object}	Readiness
//	@Failure		503	{object}	problem.Details	"a dependency is down"
//	@Failure		400	{string}	string	"a malformed HTTP request (Go's HTTP server answers it before any handler, on every route)"
//	@Security
//	@Router			/readyz [get]
func (p *Probes) Ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	status := map[string]string{}
	var down []string
	for _, c := range p.checks {
		if err := c.Check(ctx); err != nil {
			status[c.Name] = "down: " + err.Error()
			down = append(down, c.Name)
		} else {
			status[c.Name] = "ok"
		}
	}
	if len(down) > 0 {
		d := problem.From(r, problem.New(problem.KindUnavailable, "not-ready", fmt.Sprintf("not ready: %v down", down)))
		for _, name := range down {
			d.Errors = append(d.Errors, problem.FieldError{Field: name, Detail: status[name]})
		}
		problem.WriteDetails(w, d)
		return
	}
	writeJSON(w, http.StatusOK, Readiness{Status: "ready", Checks: status})
}

// writeJSON answers v as JSON with status, as httpserver.WriteJSON does.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
