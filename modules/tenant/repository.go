package tenant

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/pagination"
)

// Repository stores tenants in PostgreSQL.
type Repository struct{ db *bun.DB }

// NewRepository returns a Repository over db.
func NewRepository(db *bun.DB) *Repository { return &Repository{db: db} }

// Insert adds t inside tx.
func (r *Repository) Insert(ctx context.Context, tx bun.IDB, t *Tenant) error {
	_, err := tx.NewInsert().Model(t).Exec(ctx)
	return err
}

// Get returns the tenant with id, or events.ErrTenantNotFound.
func (r *Repository) Get(ctx context.Context, id uuid.UUID) (Tenant, error) {
	var t Tenant
	err := r.db.NewSelect().Model(&t).Where("id = ?", id).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return t, events.ErrTenantNotFound
	}
	return t, err
}

// List returns up to limit+1 tenants older than after (all when after is nil), newest first.
func (r *Repository) List(ctx context.Context, after *pagination.Cursor, limit int) ([]Tenant, error) {
	var ts []Tenant
	return ts, pagination.Apply(r.db.NewSelect().Model(&ts), after, limit).Scan(ctx)
}

// SetConcurrency updates a tenant's worker count and returns the updated tenant, or events.ErrTenantNotFound.
func (r *Repository) SetConcurrency(ctx context.Context, id uuid.UUID, workers int) (Tenant, error) {
	var t Tenant
	err := r.db.NewUpdate().Model(&t).Set("concurrency_config = ?", workers).Set("updated_at = now()").
		Where("id = ?", id).Returning("*").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return t, events.ErrTenantNotFound
	}
	return t, err
}

// Delete removes the tenant's row inside db; it returns events.ErrTenantNotFound when there was none, so of concurrent deletes
// exactly one succeeds.
func (r *Repository) Delete(ctx context.Context, db bun.IDB, id uuid.UUID) error {
	res, err := db.NewDelete().Model((*Tenant)(nil)).Where("id = ?", id).Exec(ctx)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return events.ErrTenantNotFound
	}
	return nil
}

// Tenants implements events.TenantDirectory.
func (r *Repository) Tenants(ctx context.Context) ([]events.Tenant, error) {
	var ts []Tenant
	if err := r.db.NewSelect().Model(&ts).Order("created_at").Scan(ctx); err != nil {
		return nil, fmt.Errorf("tenant: list all: %w", err)
	}
	out := make([]events.Tenant, len(ts))
	for i, t := range ts {
		out[i] = t.event()
	}
	return out, nil
}

// Tenant implements events.TenantDirectory.
func (r *Repository) Tenant(ctx context.Context, id uuid.UUID) (events.Tenant, bool, error) {
	t, err := r.Get(ctx, id)
	if errors.Is(err, events.ErrTenantNotFound) {
		return events.Tenant{}, false, nil
	}
	if err != nil {
		return events.Tenant{}, false, err
	}
	return t.event(), true, nil
}

// InsertKey issues a new API key for the tenant inside db and returns it; only its hash is stored.
func (r *Repository) InsertKey(ctx context.Context, db bun.IDB, tenantID uuid.UUID) (IssuedKey, error) {
	key, id, hash := auth.NewKey()
	k := IssuedKey{KeyID: id, APIKey: key, TenantID: tenantID}
	err := db.NewRaw("INSERT INTO api_keys (id, tenant_id, hash) VALUES (?, ?, ?) RETURNING created_at",
		id, tenantID, hash).Scan(ctx, &k.CreatedAt)
	if err != nil {
		return IssuedKey{}, fmt.Errorf("insert api key: %w", err)
	}
	k.CreatedAt = k.CreatedAt.UTC()
	return k, nil
}

// RevokeKey revokes one of the tenant's keys; ErrKeyNotFound when it has no such key that is not revoked.
func (r *Repository) RevokeKey(ctx context.Context, tenantID uuid.UUID, keyID string) error {
	res, err := r.db.NewRaw("UPDATE api_keys SET revoked_at = now() WHERE id = ? AND tenant_id = ? AND revoked_at IS NULL",
		keyID, tenantID).Exec(ctx)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrKeyNotFound
	}
	return nil
}

// KeyHash implements auth.TenantKeys: the stored hash of a key that is not revoked.
func (r *Repository) KeyHash(ctx context.Context, keyID string) (uuid.UUID, []byte, bool, error) {
	var row struct {
		TenantID uuid.UUID `bun:"tenant_id"`
		Hash     []byte    `bun:"hash"`
	}
	err := r.db.NewRaw("SELECT tenant_id, hash FROM api_keys WHERE id = ? AND revoked_at IS NULL", keyID).Scan(ctx, &row)
	if errors.Is(err, sql.ErrNoRows) {
		return uuid.Nil, nil, false, nil
	}
	if err != nil {
		return uuid.Nil, nil, false, err
	}
	return row.TenantID, row.Hash, true, nil
}

// SetRateLimit updates a tenant's rate limit (nil: the default) and returns the updated tenant, or events.ErrTenantNotFound.
func (r *Repository) SetRateLimit(ctx context.Context, id uuid.UUID, limit *float64) (Tenant, error) {
	var t Tenant
	err := r.db.NewUpdate().Model(&t).Set("rate_limit = ?", limit).Set("updated_at = now()").
		Where("id = ?", id).Returning("*").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return t, events.ErrTenantNotFound
	}
	return t, err
}

// SetRetention updates a tenant's retention (nil: the default) and returns the updated tenant, or events.ErrTenantNotFound.
func (r *Repository) SetRetention(ctx context.Context, id uuid.UUID, maxAge *int64) (Tenant, error) {
	var t Tenant
	err := r.db.NewUpdate().Model(&t).Set("max_age_seconds = ?", maxAge).Set("updated_at = now()").
		Where("id = ?", id).Returning("*").Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return t, events.ErrTenantNotFound
	}
	return t, err
}
