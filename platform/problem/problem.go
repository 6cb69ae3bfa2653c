// Package problem carries domain errors with a kind and a slug, and translates them, in this one place, into
// RFC 9457 problem details (application/problem+json).
package problem

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5/middleware"
)

// Kind classifies an error by what the client can do about it; it decides the HTTP status.
type Kind int

// The kinds of errors the API answers.
const (
	KindInternal     Kind = iota // 500: a bug; details are logged, not shown
	KindInvalid                  // 400: malformed or invalid input
	KindUnauthorized             // 401
	KindForbidden                // 403
	KindNotFound                 // 404
	KindConflict                 // 409
	KindTooLarge                 // 413
	KindUnsupported              // 415: not JSON
	KindTooMany                  // 429
	KindUnavailable              // 503: a dependency is down; retry later
)

var statusOf = map[Kind]int{
	KindInternal:     http.StatusInternalServerError,
	KindInvalid:      http.StatusBadRequest,
	KindUnauthorized: http.StatusUnauthorized,
	KindForbidden:    http.StatusForbidden,
	KindNotFound:     http.StatusNotFound,
	KindConflict:     http.StatusConflict,
	KindTooLarge:     http.StatusRequestEntityTooLarge,
	KindUnsupported:  http.StatusUnsupportedMediaType,
	KindTooMany:      http.StatusTooManyRequests,
	KindUnavailable:  http.StatusServiceUnavailable,
}

// FieldError names one invalid field of a request.
type FieldError struct {
	Field  string `json:"field" example:"concurrency_config"`
	Detail string `json:"detail" example:"must be between 1 and 100"`
}

// Error is a domain error with a machine-readable slug and a message safe to show to clients.
type Error struct {
	Kind   Kind
	Slug   string
	Detail string
	Fields []FieldError
	Err    error // cause, logged but never shown
	// RetryAfter, when positive, is sent as the Retry-After header (429, 503).
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Slug, e.Detail, e.Err)
	}
	return e.Slug + ": " + e.Detail
}

func (e *Error) Unwrap() error { return e.Err }

// Invalid is a 400 for one field.
func Invalid(field, detail string) *Error {
	return &Error{Kind: KindInvalid, Slug: "invalid-request", Detail: field + ": " + detail,
		Fields: []FieldError{{Field: field, Detail: detail}}}
}

// New returns an error of kind with slug and detail.
func New(kind Kind, slug, detail string) *Error {
	return &Error{Kind: kind, Slug: slug, Detail: detail}
}

// Unavailable is a 503 caused by err.
func Unavailable(slug, detail string, err error) *Error {
	return &Error{Kind: KindUnavailable, Slug: slug, Detail: detail, Err: err}
}

// Details is the RFC 9457 body, sent as application/problem+json with every error status.
type Details struct {
	// Type is a URI naming the kind of problem; its last segment is a stable slug.
	Type string `json:"type" validate:"required" example:"https://msgsvc.dev/problems/invalid-request"`
	// Title is the HTTP status text.
	Title  string `json:"title" validate:"required" example:"Bad Request"`
	Status int    `json:"status" validate:"required" example:"400"`
	// Detail explains this occurrence in words safe to show.
	Detail string `json:"detail,omitempty" example:"concurrency_config: must be between 1 and 100"`
	// Instance is the request path.
	Instance string `json:"instance,omitempty" example:"/api/v1/tenants"`
	// RequestID is also in the service's logs.
	RequestID string `json:"request_id,omitempty" example:"host/abc-000001"`
	// Errors lists the invalid fields of a 400 (or the checks that are down, for /readyz).
	Errors []FieldError `json:"errors,omitempty"`
}

// TypeBase prefixes a problem's slug to form its type URI.
const TypeBase = "https://msgsvc.dev/problems/"

// From converts any error into problem details; errors that are not *Error become a generic 500.
func From(r *http.Request, err error) Details {
	var pe *Error
	if !errors.As(err, &pe) {
		pe = &Error{Kind: KindInternal, Slug: "internal", Detail: "an internal error occurred"}
	}
	status := statusOf[pe.Kind]
	d := Details{
		Type:   TypeBase + pe.Slug,
		Title:  http.StatusText(status),
		Status: status,
		Detail: pe.Detail,
		Errors: pe.Fields,
	}
	if pe.Kind == KindInternal {
		d.Detail = "an internal error occurred"
	}
	if r != nil {
		d.Instance = r.URL.Path
		d.RequestID = middleware.GetReqID(r.Context())
	}
	return d
}

// Write answers err as problem details.
func Write(w http.ResponseWriter, r *http.Request, err error) {
	var pe *Error
	if errors.As(err, &pe) && pe.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(pe.RetryAfter.Seconds()))))
	}
	WriteDetails(w, From(r, err))
}

// WriteDetails writes d with its status and the problem media type.
func WriteDetails(w http.ResponseWriter, d Details) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(d.Status)
	_ = json.NewEncoder(w).Encode(d)
}

// StatusOf returns the HTTP status err maps to.
func StatusOf(err error) int {
	var pe *Error
	if errors.As(err, &pe) {
		return statusOf[pe.Kind]
	}
	return http.StatusInternalServerError
}

// Dependency reports a failure of a dependency (the database, the broker) as a 503 that asks the client to
// retry; an error that already is a problem passes through unchanged.
func Dependency(err error) error {
	var pe *Error
	if errors.As(err, &pe) {
		return err
	}
	return Unavailable("dependency-unavailable", "a dependency of the service is unavailable; retry later", err)
}
