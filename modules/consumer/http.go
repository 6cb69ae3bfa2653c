package consumer

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// Handlers serve the dead-letter API under /api/v1/tenants/{id}/dead-letters; dead letters are rows of the
// dead_letters table, so reading them changes nothing.
type Handlers struct{ rt *Runtime }

// NewHandlers returns the dead-letter API handlers.
func NewHandlers(rt *Runtime) *Handlers { return &Handlers{rt: rt} }

// Register implements httpserver.Routes. Every dead-letter route is an admin's: they sit in the group that
// auth.AdminOnly guards.
func (h *Handlers) Register(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(auth.AdminOnly)
		r.Get("/api/v1/tenants/{id}/dead-letters", h.list)
		r.Post("/api/v1/tenants/{id}/dead-letters/replay", h.replay)
		r.Get("/api/v1/tenants/{id}/dead-letters/{message_id}", h.get)
		r.Delete("/api/v1/tenants/{id}/dead-letters/{message_id}", h.discard)
		r.Post("/api/v1/tenants/{id}/dead-letters/{message_id}/replay", h.replayOne)
	})
}

// DeadLetterPage is a page of dead letters, newest first, the answer of the list endpoint.
type DeadLetterPage = pagination.Page[DeadLetter]

// Replayed is the answer to a replay.
type Replayed struct {
	Replayed int `json:"replayed" example:"2"`
}

// tenant parses the {id} path parameter and answers 404 when there is no such tenant.
func (h *Handlers) tenant(w http.ResponseWriter, r *http.Request) (uuid.UUID, bool) {
	id, err := httpserver.ParseUUID("id", chi.URLParam(r, "id"))
	if err == nil {
		var ok bool
		_, ok, err = h.rt.dir.Tenant(r.Context(), id)
		if err != nil {
			err = problem.Dependency(err)
		} else if !ok {
			err = events.ErrTenantNotFound
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

// errDeadLetterNotFound answers a dead letter the tenant does not have.
var errDeadLetterNotFound = problem.New(problem.KindNotFound, "dead-letter-not-found", "the tenant has no dead letter with this id")

// tenantMessage reads the tenant (as tenant does) and the message id of a dead letter's path.
func (h *Handlers) tenantMessage(w http.ResponseWriter, r *http.Request) (tenant, message uuid.UUID, ok bool) {
	if tenant, ok = h.tenant(w, r); !ok {
		return
	}
	message, err := httpserver.ParseUUID("message_id", chi.URLParam(r, "message_id"))
	if err != nil {
		problem.Write(w, r, err)
		return tenant, message, false
	}
	return tenant, message, true
}

// list godoc
//
//	@Summary		List a tenant's dead letters
//	@ID				listDeadLetters
//	@Description	Messages the service could not store (reason undecodable or retries_exhausted) and messages RabbitMQ dead-lettered by itself (delivery_limit, rejected, expired, maxlen), newest first, with cursor pagination like the message listing: pass next_cursor as cursor for the next page. They are kept in PostgreSQL, so listing changes nothing, however often. The payload is shown as JSON when it is valid JSON, else as raw_payload text. Admin key required.
//	@Tags			dead-letters
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id		path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Param			limit	query		int		false	"Page size"			minimum(1)	maximum(100)	default(20)
//	@Param			cursor	query		string	false	"next_cursor of the previous page, or an RFC 3339 time (dead-lettered before it)"
//	@Param			reason	query		string	false	"Only this reason, e.g. undecodable"
//	@Success		200		{object}	pagination.Page[consumer.DeadLetter]
//	@Failure		400		{object}	problem.Details	"malformed id, limit, cursor or reason"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		404		{object}	problem.Details	"no such tenant"
//	@Failure		503		{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/dead-letters [get]
func (h *Handlers) list(w http.ResponseWriter, r *http.Request) {
	id, ok := h.tenant(w, r)
	if !ok {
		return
	}
	limit, after, err := httpserver.PageParams(r)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	reason := r.URL.Query().Get("reason")
	if len(reason) > 64 {
		problem.Write(w, r, problem.Invalid("reason", "must be at most 64 characters"))
		return
	}
	page, err := h.rt.dead.List(r.Context(), id, reason, after, limit)
	if err != nil {
		problem.Write(w, r, problem.Dependency(err))
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, page)
}

// get godoc
//
//	@Summary		Get one dead letter
//	@ID				getDeadLetter
//	@Description	One dead-lettered message of the tenant by its message id, with its reason, last error, attempts and payload. Admin key required.
//	@Tags			dead-letters
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id			path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Param			message_id	path		string	true	"Message id (UUID)"	format(uuid)
//	@Success		200			{object}	DeadLetter
//	@Failure		400			{object}	problem.Details	"malformed id"
//	@Failure		401			{object}	problem.Details	"missing or unknown API key"
//	@Failure		403			{object}	problem.Details	"not an admin key"
//	@Failure		404			{object}	problem.Details	"no such tenant or dead letter"
//	@Failure		503			{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/dead-letters/{message_id} [get]
func (h *Handlers) get(w http.ResponseWriter, r *http.Request) {
	id, mid, ok := h.tenantMessage(w, r)
	if !ok {
		return
	}
	d, found, err := h.rt.dead.Get(r.Context(), id, mid)
	switch {
	case err != nil:
		problem.Write(w, r, problem.Dependency(err))
	case !found:
		problem.Write(w, r, errDeadLetterNotFound)
	default:
		httpserver.WriteJSON(w, http.StatusOK, d)
	}
}

// discard godoc
//
//	@Summary		Discard one dead letter
//	@ID				deleteDeadLetter
//	@Description	Deletes one dead-lettered message for good. Admin key required.
//	@Tags			dead-letters
//	@Security		BearerAuth
//	@Param			id			path	string	true	"Tenant id (UUID)"	format(uuid)
//	@Param			message_id	path	string	true	"Message id (UUID)"	format(uuid)
//	@Success		204
//	@Failure		400	{object}	problem.Details	"malformed id"
//	@Failure		401	{object}	problem.Details	"missing or unknown API key"
//	@Failure		403	{object}	problem.Details	"not an admin key"
//	@Failure		404	{object}	problem.Details	"no such tenant or dead letter"
//	@Failure		503	{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/dead-letters/{message_id} [delete]
func (h *Handlers) discard(w http.ResponseWriter, r *http.Request) {
	id, mid, ok := h.tenantMessage(w, r)
	if !ok {
		return
	}
	found, err := h.rt.dead.Delete(r.Context(), id, mid)
	switch {
	case err != nil:
		problem.Write(w, r, problem.Dependency(err))
	case !found:
		problem.Write(w, r, errDeadLetterNotFound)
	default:
		h.rt.log.Info("dead letter discarded", zap.String("tenant_id", id.String()), zap.String("message_id", mid.String()))
		w.WriteHeader(http.StatusNoContent)
	}
}

// replay godoc
//
//	@Summary		Replay a tenant's dead letters
//	@ID				replayDeadLetters
//	@Description	Publishes the tenant's dead letters back to its queue, oldest first (all that exist when the replay starts, or up to limit), each confirmed by RabbitMQ before its row is deleted, and answers how many were replayed. A failure midway leaves every message in the table or in the queue. Admin key required.
//	@Tags			dead-letters
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id		path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Param			limit	query		int		false	"Replay at most this many, 1..1000000; all when absent"
//	@Success		200		{object}	Replayed
//	@Failure		400		{object}	problem.Details	"malformed id or limit"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		404		{object}	problem.Details	"no such tenant"
//	@Failure		503		{object}	problem.Details	"RabbitMQ or the database unavailable (what was replayed stays replayed)"
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
	n, err := h.rt.dead.Replay(context.WithoutCancel(r.Context()), id, nil, limit)
	if err != nil {
		problem.Write(w, r, problem.Dependency(err))
		return
	}
	h.rt.log.Info("dead letters replayed", zap.String("tenant_id", id.String()), zap.Int("messages", n))
	httpserver.WriteJSON(w, http.StatusOK, Replayed{Replayed: n})
}

// replayOne godoc
//
//	@Summary		Replay one dead letter
//	@ID				replayDeadLetter
//	@Description	Publishes one dead letter back to the tenant's queue and deletes its row once RabbitMQ confirmed it. Admin key required.
//	@Tags			dead-letters
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id			path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Param			message_id	path		string	true	"Message id (UUID)"	format(uuid)
//	@Success		200			{object}	Replayed
//	@Failure		400			{object}	problem.Details	"malformed id"
//	@Failure		401			{object}	problem.Details	"missing or unknown API key"
//	@Failure		403			{object}	problem.Details	"not an admin key"
//	@Failure		404			{object}	problem.Details	"no such tenant or dead letter"
//	@Failure		503			{object}	problem.Details	"RabbitMQ or the database unavailable (the dead letter stays)"
//	@Router			/api/v1/tenants/{id}/dead-letters/{message_id}/replay [post]
func (h *Handlers) replayOne(w http.ResponseWriter, r *http.Request) {
	id, mid, ok := h.tenantMessage(w, r)
	if !ok {
		return
	}
	n, err := h.rt.dead.Replay(context.WithoutCancel(r.Context()), id, &mid, 1)
	switch {
	case errors.Is(err, ErrNotFound):
		problem.Write(w, r, errDeadLetterNotFound)
	case err != nil:
		problem.Write(w, r, problem.Dependency(err))
	default:
		h.rt.log.Info("dead letter replayed", zap.String("tenant_id", id.String()), zap.String("message_id", mid.String()))
		httpserver.WriteJSON(w, http.StatusOK, Replayed{Replayed: n})
	}
}
