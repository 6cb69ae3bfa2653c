package consumer

import (
	"context"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/problem"
)

// Handlers serve the dead-letter API under /api/v1/tenants/{id}/dead-letters.
type Handlers struct{ rt *Runtime }

// NewHandlers returns the dead-letter API handlers.
func NewHandlers(rt *Runtime) *Handlers { return &Handlers{rt: rt} }

// Register implements httpserver.Routes.
func (h *Handlers) Register(r chi.Router) {
	r.Get("/api/v1/tenants/{id}/dead-letters", h.list)
	r.Post("/api/v1/tenants/{id}/dead-letters/replay", h.replay)
}

// Replayed is the answer to a replay.
type Replayed struct {
	Replayed int `json:"replayed" example:"2"`
}

func (h *Handlers) tenant(w http.ResponseWriter, r *http.Request) (uuid.UUID, bool) {
	err := auth.RequireAdmin(r.Context())
	var id uuid.UUID
	if err == nil {
		id, err = httpserver.ParseUUID("id", chi.URLParam(r, "id"))
	}
	if err == nil {
		var ok bool
		_, ok, err = h.rt.dir.Tenant(r.Context(), id)
		if err != nil {
			err = problem.Dependency(err)
		} else if !ok {
			err = problem.New(problem.KindNotFound, "tenant-not-found", "no tenant with this id")
		}
	}
	if err != nil {
		problem.Write(w, r, err)
		return uuid.Nil, false
	}
	return id, true
}

func limitParam(r *http.Request, def, max int) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, problem.Invalid("limit", "must be an integer between 1 and "+strconv.Itoa(max))
	}
	return n, nil
}

// list godoc
//
//	@Summary		Look at a tenant's dead-lettered messages
//	@ID				listDeadLetters
//	@Description	Lists up to limit messages of the tenant's dead-letter queue without consuming them, with the total count, each message's id, reason (undecodable, retries_exhausted), last error, first-seen time and payload. Admin key required.
//	@Tags			dead-letters
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id		path		string	true	"Tenant id (UUID)"			format(uuid)
//	@Param			limit	query		int		false	"How many to show, 1..100"	default(20)
//	@Success		200		{object}	DeadLetters
//	@Failure		400		{object}	problem.Details	"malformed id or limit"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		404		{object}	problem.Details	"no such tenant"
//	@Failure		503		{object}	problem.Details	"RabbitMQ or the database unavailable"
//	@Router			/api/v1/tenants/{id}/dead-letters [get]
func (h *Handlers) list(w http.ResponseWriter, r *http.Request) {
	id, ok := h.tenant(w, r)
	if !ok {
		return
	}
	limit, err := limitParam(r, 20, 100)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	dl, err := h.rt.ListDeadLetters(r.Context(), id, limit)
	if err != nil {
		problem.Write(w, r, problem.Dependency(err))
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, dl)
}

// replay godoc
//
//	@Summary		Replay a tenant's dead-lettered messages
//	@ID				replayDeadLetters
//	@Description	Moves messages from the tenant's dead-letter queue back to its queue (all, or up to limit), each confirmed by RabbitMQ before it leaves the dead-letter queue, and answers how many moved. Admin key required.
//	@Tags			dead-letters
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id		path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Param			limit	query		int		false	"Move at most this many, 1..1000000; all when absent"
//	@Success		200		{object}	Replayed
//	@Failure		400		{object}	problem.Details	"malformed id or limit"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		404		{object}	problem.Details	"no such tenant"
//	@Failure		503		{object}	problem.Details	"RabbitMQ unavailable (the answer's count is not known; what moved stays moved)"
//	@Router			/api/v1/tenants/{id}/dead-letters/replay [post]
func (h *Handlers) replay(w http.ResponseWriter, r *http.Request) {
	id, ok := h.tenant(w, r)
	if !ok {
		return
	}
	limit, err := limitParam(r, 0, 1_000_000)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	n, err := h.rt.ReplayDeadLetters(context.WithoutCancel(r.Context()), id, limit)
	if err != nil {
		problem.Write(w, r, problem.Dependency(err))
		return
	}
	h.rt.log.Info("dead letters replayed", zap.String("tenant_id", id.String()), zap.Int("messages", n))
	httpserver.WriteJSON(w, http.StatusOK, Replayed{Replayed: n})
}
