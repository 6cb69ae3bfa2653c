package messaging

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/problem"
)

// LookupHandlers serve GET /api/v1/messages/{id} and GET /api/v1/tenants/{id}/stats.
type LookupHandlers struct {
	svc   *Service
	state ConsumerState
}

// NewLookupHandlers returns the lookup handlers; state answers for the dead letters and the queue.
func NewLookupHandlers(svc *Service, state ConsumerState) *LookupHandlers {
	return &LookupHandlers{svc: svc, state: state}
}

// Register implements httpserver.Routes.
func (h *LookupHandlers) Register(r chi.Router) {
	r.Get("/api/v1/messages/{id}", h.get)
	r.Get("/api/v1/tenants/{id}/stats", h.stats)
}

// get godoc
//
//	@Summary		Get one message by its id
//	@ID				getMessage
//	@Description	The message with the id a publish answered: 200 with state stored (the same shape as a listing item plus stored_at), or 200 with state dead_lettered, its reason and last error; 404 with slug message-not-stored while it is not stored (yet), and once it is older than the tenant's retention (max_age_seconds), deleted yet or not. One primary-key lookup in the tenant's partition: the tenant is the tenant key's own; an admin key names it with tenant_id (required then). Another tenant's message answers 404.
//	@Tags			messages
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id			path		string	true	"Message id (UUID), as answered by the publish"	format(uuid)
//	@Param			tenant_id	query		string	false	"Tenant id (UUID); required with an admin key, optional with a tenant key (another tenant answers 404)"	format(uuid)
//	@Success		200			{object}	MessageState
//	@Failure		400			{object}	problem.Details	"malformed id or tenant_id, or tenant_id missing with an admin key"
//	@Failure		401			{object}	problem.Details	"missing or unknown API key"
//	@Failure		404			{object}	problem.Details	"no such tenant, or the message is not stored (yet) (slug message-not-stored)"
//	@Failure		503			{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/messages/{id} [get]
func (h *LookupHandlers) get(w http.ResponseWriter, r *http.Request) {
	id, err := httpserver.ParseUUID("id", chi.URLParam(r, "id"))
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	var tenant *string
	if q := r.URL.Query(); q.Has("tenant_id") {
		v := q.Get("tenant_id")
		tenant = &v
	}
	tenantID, err := lookupTenant(r.Context(), tenant)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	m, err := h.svc.Get(r.Context(), tenantID, id, h.state)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, m)
}

// stats godoc
//
//	@Summary		A tenant's figures at a glance
//	@ID				getTenantStats
//	@Description	Stored messages (exact up to 10,000, above that PostgreSQL's estimate, flagged stored_messages_estimated), the newest message's time, the stored messages created in the last minute and the publish rate they make (from the database, so right with any number of replicas), the queue's ready messages and consumers (exact, from RabbitMQ), dead letters, the oldest stored message's time and the partition's size in bytes (pg_total_relation_size), and the configured workers, rate limit and retention. A handful of index lookups and one passive queue declare: cheap enough to poll. Admin key or the tenant's own key.
//	@Tags			tenants
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id	path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Success		200	{object}	Stats
//	@Failure		400	{object}	problem.Details	"malformed id"
//	@Failure		401	{object}	problem.Details	"missing or unknown API key"
//	@Failure		404	{object}	problem.Details	"no such tenant"
//	@Failure		503	{object}	problem.Details	"database or RabbitMQ unavailable"
//	@Router			/api/v1/tenants/{id}/stats [get]
func (h *LookupHandlers) stats(w http.ResponseWriter, r *http.Request) {
	id, err := httpserver.ParseUUID("id", chi.URLParam(r, "id"))
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	st, err := h.svc.Stats(r.Context(), id, h.state)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, st)
}
