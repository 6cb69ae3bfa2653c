package pagination

import (
	"github.com/google/uuid"
	"github.com/uptrace/bun"
)

// Apply orders q newest first on (created_at, id), starts it after the cursor (when not nil) and fetches
// limit+1 rows, the extra one telling NewPage whether there is more.
func Apply(q *bun.SelectQuery, after *Cursor, limit int) *bun.SelectQuery {
	q = q.OrderExpr("created_at DESC, id DESC").Limit(limit + 1)
	switch {
	case after == nil:
	case after.ID == uuid.Nil:
		q = q.Where("created_at < ?", after.CreatedAt)
	default:
		q = q.Where("(created_at, id) < (?, ?)", after.CreatedAt, after.ID)
	}
	return q
}
