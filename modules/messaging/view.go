package messaging

import (
	"sync"

	"github.com/google/uuid"
)

// view is the in-memory set of existing tenants that publishing checks instead of querying per message.
// The tenant events keep it fresh on every replica; a miss falls back to the database once.
type view struct {
	mu      sync.RWMutex
	tenants map[uuid.UUID]struct{}
}

func newView() *view { return &view{tenants: map[uuid.UUID]struct{}{}} }

func (v *view) has(id uuid.UUID) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	_, ok := v.tenants[id]
	return ok
}

func (v *view) add(id uuid.UUID) {
	v.mu.Lock()
	v.tenants[id] = struct{}{}
	v.mu.Unlock()
}

func (v *view) remove(id uuid.UUID) {
	v.mu.Lock()
	delete(v.tenants, id)
	v.mu.Unlock()
}

func (v *view) replace(ids []uuid.UUID) {
	m := make(map[uuid.UUID]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	v.mu.Lock()
	v.tenants = m
	v.mu.Unlock()
}
