package messaging

import (
	"context"

	"github.com/google/uuid"

	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// List returns a page of a tenant's messages, newest first: none older than the tenant's retention, deleted yet
// or not.
func (s *Service) List(ctx context.Context, tenantID uuid.UUID, after *pagination.Cursor, limit int) (pagination.Page[Message], error) {
	if err := s.checkTenant(ctx, tenantID); err != nil {
		return pagination.Page[Message]{}, err
	}
	var rows []Message
	q := s.db.NewSelect().Model(&rows).Column("id", "tenant_id", "payload", "created_at").Where("tenant_id = ?", tenantID).
		Where("created_at >= "+RetentionCutoff("?", "?"), tenantID, s.defaultRetentionSeconds())
	if err := pagination.Apply(q, after, limit).Scan(ctx); err != nil {
		return pagination.Page[Message]{}, problem.Dependency(err)
	}
	return pagination.NewPage(rows, limit, Message.cursor), nil
}
