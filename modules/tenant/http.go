package tenant

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// Handlers serve the tenant API under /api/v1/tenants.
type Handlers struct{ svc *Service }

// NewHandlers returns the tenant API handlers.
func NewHandlers(svc *Service) *Handlers { return &Handlers{svc: svc} }

// Register implements httpserver.Routes.
func (h *Handlers) Register(r chi.Router) {
	r.Route("/api/v1/tenants", func(r chi.Router) {
		r.Post("/", h.create)
		r.Get("/", h.list)
		r.Get("/{id}", h.get)
		r.Put("/{id}/config/concurrency", h.setConcurrency)
		r.Delete("/{id}", h.delete)
	})
}

// TenantPage is a page of tenants, the answer of the list endpoint.
type TenantPage = pagination.Page[Tenant]

// create godoc
//
//	@Summary		Create a tenant
//	@ID				createTenant
//	@Description	Creates the tenant's row, its partition of messages, its durable queue and dead-letter queue, and starts its consumer with concurrency_config workers (default 3).
//	@Tags			tenants
//	@Accept			json
//	@Produce		json
//	@Param			tenant	body		CreateRequest	true	"The new tenant"
//	@Success		201		{object}	Tenant
//	@Header			201		{string}	Location		"/api/v1/tenants/{id} of the new tenant"
//	@Failure		400		{object}	problem.Details	"invalid input"
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
	t, err := h.svc.Create(r.Context(), req)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/tenants/"+t.ID.String())
	httpserver.WriteJSON(w, http.StatusCreated, t)
}

// get godoc
//
//	@Summary	Get a tenant
//	@ID			getTenant
//	@Tags		tenants
//	@Produce	json
//	@Param		id	path		string	true	"Tenant id (UUID)"	format(uuid)
//	@Success	200	{object}	Tenant
//	@Failure	400	{object}	problem.Details	"malformed id"
//	@Failure	404	{object}	problem.Details	"no such tenant"
//	@Failure	503	{object}	problem.Details	"database unavailable"
//	@Router		/api/v1/tenants/{id} [get]
func (h *Handlers) get(w http.ResponseWriter, r *http.Request) {
	id, err := httpserver.ParseUUID("id", chi.URLParam(r, "id"))
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	t, err := h.svc.Get(r.Context(), id)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, t)
}

// list godoc
//
//	@Summary		List tenants
//	@ID				listTenants
//	@Description	Newest first, with cursor pagination: pass next_cursor from one page as cursor for the next.
//	@Tags			tenants
//	@Produce		json
//	@Param			limit	query		int		false	"Page size"	minimum(1)	maximum(100)	default(20)
//	@Param			cursor	query		string	false	"next_cursor of the previous page, or an RFC 3339 time"
//	@Success		200		{object}	pagination.Page[tenant.Tenant]
//	@Failure		400		{object}	problem.Details	"invalid limit or cursor"
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
//	@Description	The live consumer's worker pool and prefetch follow within a second, without losing or duplicating a message.
//	@Tags			tenants
//	@Accept			json
//	@Produce		json
//	@Param			id		path		string				true	"Tenant id (UUID)"	format(uuid)
//	@Param			config	body		ConcurrencyRequest	true	"New worker count"
//	@Success		200		{object}	Tenant
//	@Failure		400		{object}	problem.Details	"invalid input"
//	@Failure		404		{object}	problem.Details	"no such tenant"
//	@Failure		413		{object}	problem.Details	"body too large"
//	@Failure		415		{object}	problem.Details	"not JSON"
//	@Failure		503		{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id}/config/concurrency [put]
func (h *Handlers) setConcurrency(w http.ResponseWriter, r *http.Request) {
	id, err := httpserver.ParseUUID("id", chi.URLParam(r, "id"))
	if err != nil {
		problem.Write(w, r, err)
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

// delete godoc
//
//	@Summary		Delete a tenant
//	@ID				deleteTenant
//	@Description	Stops its consumers gracefully, then deletes its queues, its partition and its row.
//	@Tags			tenants
//	@Produce		json
//	@Param			id	path	string	true	"Tenant id (UUID)"	format(uuid)
//	@Success		204	"deleted"
//	@Failure		400	{object}	problem.Details	"malformed id"
//	@Failure		404	{object}	problem.Details	"no such tenant"
//	@Failure		503	{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/tenants/{id} [delete]
func (h *Handlers) delete(w http.ResponseWriter, r *http.Request) {
	id, err := httpserver.ParseUUID("id", chi.URLParam(r, "id"))
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	if err := h.svc.Delete(r.Context(), id); err != nil {
		problem.Write(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
