package tenant

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// Handlers serve the tenant API under /api/v1/tenants.
type Handlers struct {
	svc    *Service
	states events.ConsumerStates // optional: GET shows the consumer's state when set
}

// NewHandlers returns the tenant API handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// WithConsumerStates makes GET /api/v1/tenants/{id} show the tenant's consumer state from states.
func (h *Handlers) WithConsumerStates(states events.ConsumerStates) *Handlers {
	h.states = states
	return h
}

// TenantWithConsumer is a tenant with the state of its consumer, the answer of GET /api/v1/tenants/{id}.
type TenantWithConsumer struct {
	Tenant
	// Consumer is the state of the tenant's consumer across the replicas.
	Consumer *ConsumerState `json:"consumer,omitempty"`
}

// ConsumerState is the state of a tenant's consumer (events.ConsumerState, documented here for the API).
type ConsumerState struct {
	// Replica is the replica that owns the tenant's worker pool ("" when no replica is alive to own it).
	Replica string `json:"replica" example:"msgsvc-0"`
	// Running is true when the owner's consumer consumes the tenant's queue.
	Running bool `json:"running"`
	// Workers is the owner's worker count while it runs, else 0.
	Workers int `json:"workers" example:"5"`
	// QueueDepth is the number of messages ready in the tenant's queue, -1 when the broker did not answer.
	QueueDepth int `json:"queue_depth" example:"0"`
	// QueueConsumers is the number of consumers the broker counts on the tenant's queue.
	QueueConsumers int `json:"queue_consumers" example:"1"`
	// Error says why the consumer failed to start at its last attempt on the owner; it is retried.
	Error string `json:"error,omitempty"`
}

// Register implements httpserver.Routes. Every route but GET /{id} is an admin's: they sit in the group that
// auth.AdminOnly guards.
func (h *Handlers) Register(r chi.Router) {
	r.Route("/api/v1/tenants", func(r chi.Router) {
		r.Get("/{id}", h.get) // an admin, or the tenant's own key
		r.Group(func(r chi.Router) {
			r.Use(auth.AdminOnly)
			r.Post("/", h.create)
			r.Get("/", h.list)
			r.Put("/{id}/config/concurrency", h.setConcurrency)
			r.Put("/{id}/config/rate-limit", h.setRateLimit)
			r.Put("/{id}/config/retention", h.setRetention)
			r.Post("/{id}/api-keys", h.issueKey)
			r.Delete("/{id}/api-keys/{key_id}", h.revokeKey)
			r.Delete("/{id}", h.delete)
		})
	})
}

// TenantPage is a page of tenants, the answer of the list endpoint.
type TenantPage = pagination.Page[Tenant]

// pathID parses the {id} path parameter, answering 400 when it is not a UUID.
func pathID(w http.ResponseWriter, r *http.Request) (uuid.UUID, bool) {
	id, err := httpserver.ParseUUID("id", chi.URLParam(r, "id"))
	if err != nil {
		problem.Write(w, r, err)
		return uuid.Nil, false
	}
	return id, true
}

// create godoc
//
//	@Summary		Create a tenant
//	@ID				createTenant
//	@Description	Creates the tenant's row (claiming a partition of messages made ahead of time, or making one when none is ready), its durable queue, and starts its consumer with concurrency_config workers (default 3). The answer carries the tenant's first API key, shown this once. Admin key required.
//	@Tags			tenants
//	@Accept			json
//	@Produce		json
//	@Security		BearerAuth
//	@Param			tenant	body		CreateRequest	true	"The new tenant"
//	@Success		201		{object}	Created
//	@Header			201		{string}	Location		"/api/v1/tenants/{id} of the new tenant"
//	@Failure		400		{object}	problem.Details	"invalid input"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		413		{object}	problem.Details	"body too large"
//	@Failure		415		{object}	problem.Details	"not JSON"
//	@Failure		503		{object}	problem.Details	"database or broker unavailable"
//	@Router			/api/v1/tenants [post]
func (h *Handlers) create(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if err := httpserver.DecodeJSON(r, &req); err != nil {
		problem.Write(w, r, err)
		return
	}
	c, err := h.svc.Create(r.Context(), req)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/tenants/"+c.ID.String())
	w.Header().Set("Cache-Control", "no-store")
	httpserver.WriteJSON(w, http.StatusCreated, c)
}

// get godoc
//
//	@Summary		Get a tenant
//	@ID				getTenant
//	@Description	An admin key reads every tenant; a tenant key reads its own tenant (another tenant answers 404). The answer shows the state of the tenant's consumer: the replica that owns it, whether it runs, its workers and its queue's depth.
//	@Tags			tenants
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id	path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Success		200	{object}	TenantWithConsumer
//	@Failure		400	{object}	problem.Details	"malformed id"
//	@Failure		401	{object}	problem.Details	"missing or unknown API key"
//	@Failure		404	{object}	problem.Details	"no such tenant"
//	@Failure		503	{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id} [get]
func (h *Handlers) get(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	if !auth.CanAccessTenant(r.Context(), id) {
		problem.Write(w, r, events.ErrTenantNotFound)
		return
	}
	t, err := h.svc.Get(r.Context(), id)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	out := TenantWithConsumer{Tenant: t}
	if h.states != nil {
		st := ConsumerState(h.states.ConsumerState(r.Context(), id, t.ConcurrencyConfig))
		out.Consumer = &st
	}
	httpserver.WriteJSON(w, http.StatusOK, out)
}

// list godoc
//
//	@Summary		List tenants
//	@ID				listTenants
//	@Description	Newest first, with cursor pagination: pass next_cursor from one page as cursor for the next. Admin key required.
//	@Tags			tenants
//	@Produce		json
//	@Security		BearerAuth
//	@Param			limit	query		int		false	"Page size"	minimum(1)	maximum(100)	default(20)
//	@Param			cursor	query		string	false	"next_cursor of the previous page, or an RFC 3339 time"
//	@Success		200		{object}	pagination.Page[tenant.Tenant]
//	@Failure		400		{object}	problem.Details	"invalid limit or cursor"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		503		{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants [get]
func (h *Handlers) list(w http.ResponseWriter, r *http.Request) {
	limit, after, err := httpserver.PageParams(r)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	page, err := h.svc.List(r.Context(), after, limit)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, page)
}

// setConcurrency godoc
//
//	@Summary		Change a tenant's worker count
//	@ID				setTenantConcurrency
//	@Description	The live consumer's worker pool and prefetch follow within a second, without losing or duplicating a message. Admin key required.
//	@Tags			tenants
//	@Accept			json
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id		path		string				true	"Tenant id (UUID)"	format(uuid)
//	@Param			config	body		ConcurrencyRequest	true	"New worker count"
//	@Success		200		{object}	Tenant
//	@Failure		400		{object}	problem.Details	"invalid input"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		404		{object}	problem.Details	"no such tenant"
//	@Failure		413		{object}	problem.Details	"body too large"
//	@Failure		415		{object}	problem.Details	"not JSON"
//	@Failure		503		{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/config/concurrency [put]
func (h *Handlers) setConcurrency(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var req ConcurrencyRequest
	if err := httpserver.DecodeJSON(r, &req); err != nil {
		problem.Write(w, r, err)
		return
	}
	t, err := h.svc.SetConcurrency(r.Context(), id, req)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, t)
}

// setRateLimit godoc
//
//	@Summary		Set a tenant's publish rate limit
//	@ID				setTenantRateLimit
//	@Description	Cluster-wide: messages_per_second for all replicas together, each replica applying its share of the tenant's demand, with a burst of one second's worth (at least 1). 0 means unlimited; null restores RATE_LIMIT_DEFAULT. Publishing over the limit answers 429 with Retry-After. Admin key required.
//	@Tags			tenants
//	@Accept			json
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id		path		string				true	"Tenant id (UUID)"	format(uuid)
//	@Param			config	body		RateLimitRequest	true	"New limit"
//	@Success		200		{object}	Tenant
//	@Failure		400		{object}	problem.Details	"invalid input"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		404		{object}	problem.Details	"no such tenant"
//	@Failure		503		{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/config/rate-limit [put]
func (h *Handlers) setRateLimit(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var req RateLimitRequest
	if err := httpserver.DecodeJSON(r, &req); err != nil {
		problem.Write(w, r, err)
		return
	}
	t, err := h.svc.SetRateLimit(r.Context(), id, req)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, t)
}

// setRetention godoc
//
//	@Summary		Set a tenant's retention
//	@ID				setTenantRetention
//	@Description	How long the tenant's messages are kept, in seconds: older ones are never listed or found by id, and are deleted in the background within RETENTION_INTERVAL. 0 keeps them forever; null restores RETENTION_DEFAULT. Takes effect on every replica at once. Admin key required.
//	@Tags			tenants
//	@Accept			json
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id		path		string				true	"Tenant id (UUID)"	format(uuid)
//	@Param			config	body		RetentionRequest	true	"New retention"
//	@Success		200		{object}	Tenant
//	@Failure		400		{object}	problem.Details	"invalid input"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		404		{object}	problem.Details	"no such tenant"
//	@Failure		503		{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/config/retention [put]
func (h *Handlers) setRetention(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var req RetentionRequest
	if err := httpserver.DecodeJSON(r, &req); err != nil {
		problem.Write(w, r, err)
		return
	}
	t, err := h.svc.SetRetention(r.Context(), id, req)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, t)
}

// issueKey godoc
//
//	@Summary		Issue another API key for a tenant
//	@ID				issueTenantKey
//	@Description	For rotation: the new key works at once, alongside the old ones, until they are revoked. The key is shown this once. Admin key required.
//	@Tags			api-keys
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id	path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Success		201	{object}	IssuedKey
//	@Failure		400	{object}	problem.Details	"malformed id"
//	@Failure		401	{object}	problem.Details	"missing or unknown API key"
//	@Failure		403	{object}	problem.Details	"not an admin key"
//	@Failure		404	{object}	problem.Details	"no such tenant"
//	@Failure		503	{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/api-keys [post]
func (h *Handlers) issueKey(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	k, err := h.svc.IssueKey(r.Context(), id)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	httpserver.WriteJSON(w, http.StatusCreated, k)
}

// revokeKey godoc
//
//	@Summary		Revoke a tenant's API key
//	@ID				revokeTenantKey
//	@Description	The key stops working at once on this replica and within AUTH_CACHE_TTL on the others. Admin key required.
//	@Tags			api-keys
//	@Security		BearerAuth
//	@Param			id		path	string	true	"Tenant id (UUID)"	format(uuid)
//	@Param			key_id	path	string	true	"The key's id (key_id or api_key_id)"
//	@Success		204		"revoked"
//	@Failure		400		{object}	problem.Details	"malformed id"
//	@Failure		401		{object}	problem.Details	"missing or unknown API key"
//	@Failure		403		{object}	problem.Details	"not an admin key"
//	@Failure		404		{object}	problem.Details	"no such tenant or active key"
//	@Failure		503		{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/api-keys/{key_id} [delete]
func (h *Handlers) revokeKey(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	if err := h.svc.RevokeKey(r.Context(), id, chi.URLParam(r, "key_id")); err != nil {
		problem.Write(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// delete godoc
//
//	@Summary		Delete a tenant
//	@ID				deleteTenant
//	@Description	Deletes its row and API keys first (from then on the tenant answers 404), stops its consumers gracefully, then deletes its queues; its partition of messages is dropped in the background. Admin key required.
//	@Tags			tenants
//	@Produce		json
//	@Security		BearerAuth
//	@Param			id	path	string	true	"Tenant id (UUID)"	format(uuid)
//	@Success		204	"deleted"
//	@Failure		400	{object}	problem.Details	"malformed id"
//	@Failure		401	{object}	problem.Details	"missing or unknown API key"
//	@Failure		403	{object}	problem.Details	"not an admin key"
//	@Failure		404	{object}	problem.Details	"no such tenant"
//	@Failure		503	{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id} [delete]
func (h *Handlers) delete(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	if err := h.svc.Delete(r.Context(), id); err != nil {
		problem.Write(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
