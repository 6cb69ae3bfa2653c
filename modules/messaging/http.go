package messaging

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// Handlers serve the message API under /api/v1/messages.
type Handlers struct {
	svc           *Service
	maxBatchBytes int64
}

// NewHandlers returns the message API handlers; a batch body may hold up to maxBatchBytes.
func NewHandlers(svc *Service, maxBatchBytes int64) *Handlers {
	return &Handlers{svc: svc, maxBatchBytes: maxBatchBytes}
}

// Register implements httpserver.Routes.
func (h *Handlers) Register(r chi.Router) {
	r.Post("/api/v1/messages", h.publish)
	r.Post("/api/v1/messages/batch", h.publishBatch)
	r.Get("/api/v1/messages", h.list)
}

// MessagePage is a page of messages, the answer of the list endpoint.
type MessagePage = pagination.Page[Message]

// publish godoc
//
//	@Summary		Publish a message
//	@ID				publishMessage
//	@Description	Publishes the payload persistently to the tenant's queue and answers 202 only once RabbitMQ confirmed it, within PUBLISH_CONFIRM_TIMEOUT of the request's start. An admin key or the tenant's own key (another tenant answers 404). With an Idempotency-Key header the message id is derived from the tenant and the key, so a retried request is stored once. A message not yet handed to RabbitMQ when its request ends (client gone, deadline) is never sent.
//	@Tags			messages
//	@Accept			json
//	@Produce		json
//	@Security		BearerAuth
//	@Param			Idempotency-Key	header		string			false	"Makes retries of this request store one message"
//	@Param			message			body		PublishRequest	true	"Tenant and JSON payload (object or array)"
//	@Success		202				{object}	Accepted
//	@Failure		400				{object}	problem.Details	"invalid input"
//	@Failure		401				{object}	problem.Details	"missing or unknown API key"
//	@Failure		404				{object}	problem.Details	"no such tenant"
//	@Failure		413				{object}	problem.Details	"body too large"
//	@Failure		415				{object}	problem.Details	"not JSON"
//	@Failure		429				{object}	problem.Details	"the tenant's rate limit is exceeded (Retry-After)"
//	@Failure		503				{object}	problem.Details	"broker-unavailable: no confirm within PUBLISH_CONFIRM_TIMEOUT of the request's start; broker-blocked: RabbitMQ blocks publishing (memory or disk alarm); publish-queue-full: PUBLISH_MAX_PENDING of the tenant's publishes wait; queue-not-confirming: PUBLISH_MAX_UNCONFIRMED envelopes to the tenant's queue wait for RabbitMQ's confirm (its queue does not answer). The detail says whether the message was not sent or may still be stored; retry with the same Idempotency-Key (Retry-After)"
//	@Router			/api/v1/messages [post]
func (h *Handlers) publish(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.svc.publishTimeout) // from the request's start
	defer cancel()
	body, err := httpserver.ReadJSON(r)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	var req PublishRequest
	if !parsePublish(body, &req) { // an unusual body: the strict decoder decides, and words the error
		if err := httpserver.DecodeJSONBody(body, &req); err != nil {
			problem.Write(w, r, err)
			return
		}
	}
	a, err := h.svc.Publish(ctx, req, r.Header.Get("Idempotency-Key"))
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSONBytes(w, http.StatusAccepted, a.appendJSON(make([]byte, 0, 160)))
}

// publishBatch godoc
//
//	@Summary		Publish up to 1,000 messages at once
//	@ID				publishMessageBatch
//	@Description	Validates every message (one invalid message rejects the batch), publishes them all persistently to the tenant's queue with their confirms in flight together, and answers 202 with their ids (in request order) only once RabbitMQ confirmed every one. On 503 some messages may have been accepted: retry with the same Idempotency-Key, and each message keeps its id (derived from the tenant, the key and its index), so it is stored once.
//	@Tags			messages
//	@Accept			json
//	@Produce		json
//	@Security		BearerAuth
//	@Param			Idempotency-Key	header		string			false	"Makes retries of this batch store each message once"
//	@Param			batch			body		BatchRequest	true	"Tenant and 1..1000 messages"
//	@Success		202				{object}	BatchAccepted
//	@Failure		400				{object}	problem.Details	"invalid input"
//	@Failure		401				{object}	problem.Details	"missing or unknown API key"
//	@Failure		404				{object}	problem.Details	"no such tenant"
//	@Failure		413				{object}	problem.Details	"body too large (HTTP_MAX_BATCH_BODY_BYTES)"
//	@Failure		415				{object}	problem.Details	"not JSON"
//	@Failure		429				{object}	problem.Details	"the tenant's rate limit is exceeded (Retry-After)"
//	@Failure		503				{object}	problem.Details	"broker-unavailable: not every confirm within PUBLISH_CONFIRM_TIMEOUT of the request's start; broker-blocked: RabbitMQ blocks publishing (memory or disk alarm); queue-not-confirming: PUBLISH_MAX_UNCONFIRMED envelopes to the tenant's queue wait for RabbitMQ's confirm (its queue does not answer). Unless the detail says nothing was sent, some messages may be stored: retry with the same Idempotency-Key"
//	@Router			/api/v1/messages/batch [post]
func (h *Handlers) publishBatch(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.svc.publishTimeout) // from the request's start
	defer cancel()
	var req BatchRequest
	if err := httpserver.DecodeJSONLimit(r, &req, h.maxBatchBytes); err != nil {
		problem.Write(w, r, err)
		return
	}
	a, err := h.svc.PublishBatch(ctx, req, r.Header.Get("Idempotency-Key"))
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusAccepted, a)
}

// list godoc
//
//	@Summary		List a tenant's messages
//	@ID				listMessages
//	@Description	Newest first, with cursor pagination: pass next_cursor from one page as cursor for the next; a cursor may also be an RFC 3339 time (messages older than it). Messages older than the tenant's retention (max_age_seconds) are never listed, whether deleted yet or not.
//	@Tags			messages
//	@Produce		json
//	@Security		BearerAuth
//	@Param			tenant_id	query		string	true	"Tenant id (UUID)"	format(uuid)
//	@Param			limit		query		int		false	"Page size"			minimum(1)	maximum(100)	default(20)
//	@Param			cursor		query		string	false	"next_cursor of the previous page, or an RFC 3339 time"
//	@Success		200			{object}	pagination.Page[messaging.Message]
//	@Failure		400			{object}	problem.Details	"invalid tenant_id, limit or cursor"
//	@Failure		401				{object}	problem.Details	"missing or unknown API key"
//	@Failure		404			{object}	problem.Details	"no such tenant"
//	@Failure		503			{object}	problem.Details	"database unavailable"
//	@Router			/api/v1/messages [get]
func (h *Handlers) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var tenant *string
	if q.Has("tenant_id") {
		v := q.Get("tenant_id")
		tenant = &v
	}
	tenantID, err := parseTenantID(tenant)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	limit, after, err := httpserver.PageParams(r)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	page, err := h.svc.List(r.Context(), tenantID, after, limit)
	if err != nil {
		problem.Write(w, r, err)
		return
	}
	httpserver.WriteJSON(w, http.StatusOK, page)
}
