// Package tenant manages tenants: their rows, their validation and their HTTP API. Creating, resizing and
// deleting a tenant publishes the tenant events through which the other modules make and remove what a tenant
// needs (its partition, queues and consumer).
package tenant

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// Tenant is one customer of the service, with its own partition, queue and worker pool.
type Tenant struct {
	bun.BaseModel `bun:"table:tenants" swaggerignore:"true"`

	ID                uuid.UUID `bun:"id,pk,type:uuid" json:"id" format:"uuid" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	Name              string    `bun:"name" json:"name" example:"Acme Corp"`
	ConcurrencyConfig int       `bun:"concurrency_config" json:"concurrency_config" example:"5"`
	CreatedAt         time.Time `bun:"created_at" json:"created_at" format:"date-time" example:"2026-11-27T10:00:00Z"`
	UpdatedAt         time.Time `bun:"updated_at" json:"updated_at" format:"date-time" example:"2026-11-27T10:00:00Z"`
	// RateLimit is the tenant's own publish limit in messages per second for the whole cluster (0: unlimited); null
	// follows RATE_LIMIT_DEFAULT.
	RateLimit *float64 `bun:"rate_limit" json:"rate_limit" example:"100"`
	// MaxAgeSeconds is how long the tenant's messages are kept, in seconds (0: forever); null follows
	// RETENTION_DEFAULT. Older messages are never served and are deleted in the background.
	MaxAgeSeconds *int64 `bun:"max_age_seconds" json:"max_age_seconds" example:"604800"`
}

// Created is the answer to a creation: the tenant and its first API key, shown this once.
type Created struct {
	Tenant
	// APIKey is the tenant's key; only its hash is stored, so it cannot be shown again.
	APIKey   string `json:"api_key" example:"msk_AbCdEfGhIjKl_0123456789abcdefghijklmnopqrstuvwxyzABCDE"`
	APIKeyID string `json:"api_key_id" example:"AbCdEfGhIjKl"`
}

// IssuedKey is a newly issued API key, shown this once.
type IssuedKey struct {
	KeyID     string    `json:"key_id" example:"AbCdEfGhIjKl"`
	APIKey    string    `json:"api_key" example:"msk_AbCdEfGhIjKl_0123456789abcdefghijklmnopqrstuvwxyzABCDE"`
	TenantID  uuid.UUID `json:"tenant_id" format:"uuid" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	CreatedAt time.Time `json:"created_at" format:"date-time" example:"2026-11-27T10:00:00Z"`
}

// RateLimitRequest is the body of PUT /api/v1/tenants/{id}/config/rate-limit.
type RateLimitRequest struct {
	// MessagesPerSecond is the tenant's publish limit for the whole cluster; 0 means unlimited, null restores the default.
	MessagesPerSecond *float64 `json:"messages_per_second" example:"100"`
}

func (t Tenant) event() events.Tenant {
	return events.Tenant{ID: t.ID, Name: t.Name, Concurrency: t.ConcurrencyConfig, CreatedAt: t.CreatedAt, RateLimit: t.RateLimit,
		MaxAgeSeconds: t.MaxAgeSeconds}
}

func (t Tenant) cursor() pagination.Cursor {
	return pagination.Cursor{CreatedAt: t.CreatedAt, ID: t.ID}
}

// CreateRequest is the body of POST /api/v1/tenants.
type CreateRequest struct {
	// Name is trimmed; 1 to 255 characters.
	Name *string `json:"name" validate:"required" minLength:"1" maxLength:"255" example:"Acme Corp"`
	// ConcurrencyConfig is the tenant's worker count, 1 to TENANT_MAX_CONCURRENCY (100 by default); omitted means
	// TENANT_DEFAULT_CONCURRENCY (3 by default).
	ConcurrencyConfig *int `json:"concurrency_config,omitempty" minimum:"1" example:"5"`
	// MaxAgeSeconds is the tenant's retention in seconds, 0 (forever) to 3153600000 (100 years); omitted or null
	// means RETENTION_DEFAULT.
	MaxAgeSeconds *int64 `json:"max_age_seconds,omitempty" minimum:"0" maximum:"3153600000" example:"604800"`
}

// RetentionRequest is the body of PUT /api/v1/tenants/{id}/config/retention.
type RetentionRequest struct {
	// MaxAgeSeconds is how long the tenant's messages are kept, in seconds: 0 keeps them forever, null restores
	// RETENTION_DEFAULT.
	MaxAgeSeconds *int64 `json:"max_age_seconds" minimum:"0" maximum:"3153600000" example:"604800"`
}

// MaxRetentionSeconds is the longest retention a tenant may have: 100 years.
const MaxRetentionSeconds = 100 * 365 * 24 * 3600

// validateRetention checks a retention in seconds; nil (the default) is valid.
func validateRetention(field string, n *int64) error {
	if n != nil && (*n < 0 || *n > MaxRetentionSeconds) {
		return problem.Invalid(field, "must be between 0 (keep forever) and "+strconv.Itoa(MaxRetentionSeconds)+" seconds, or null for RETENTION_DEFAULT")
	}
	return nil
}

// ConcurrencyRequest is the body of PUT /api/v1/tenants/{id}/config/concurrency.
type ConcurrencyRequest struct {
	// Workers is the new worker count, 1 to TENANT_MAX_CONCURRENCY (100 by default).
	Workers *int `json:"workers" validate:"required" minimum:"1" example:"10"`
}

// Limits are the bounds a tenant's settings must respect.
type Limits struct {
	DefaultConcurrency int
	MaxConcurrency     int
}

// validateName trims name and checks it is 1 to 255 characters of valid UTF-8.
func validateName(name *string) (string, error) {
	if name == nil {
		return "", problem.Invalid("name", "is required")
	}
	n := strings.TrimSpace(*name)
	switch {
	case !utf8.ValidString(n):
		return "", problem.Invalid("name", "must be valid UTF-8")
	case strings.ContainsRune(n, 0): // PostgreSQL's text cannot hold it
		return "", problem.Invalid("name", "must not contain \\u0000")
	case n == "":
		return "", problem.Invalid("name", "must not be empty")
	case utf8.RuneCountInString(n) > 255:
		return "", problem.Invalid("name", "must be at most 255 characters")
	}
	return n, nil
}

// validateConcurrency checks a worker count against the limits; nil means the default.
func (l Limits) validateConcurrency(field string, n *int, required bool) (int, error) {
	if n == nil {
		if required {
			return 0, problem.Invalid(field, "is required")
		}
		return l.DefaultConcurrency, nil
	}
	if *n < 1 || *n > l.MaxConcurrency {
		return 0, problem.Invalid(field, "must be between 1 and "+strconv.Itoa(l.MaxConcurrency))
	}
	return *n, nil
}

// ErrKeyNotFound is the answer for revoking a key the tenant does not have (or already revoked).
var ErrKeyNotFound = problem.New(problem.KindNotFound, "api-key-not-found", "the tenant has no such active API key")
