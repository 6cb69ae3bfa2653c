package auth

import (
	"context"
	"crypto/sha256"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/problem"
)

// Principal is who is calling.
type Principal struct {
	Admin    bool
	TenantID uuid.UUID // the tenant of a tenant key
	KeyID    string    // the tenant key's id
}

type principalKey struct{}

// FromContext returns the caller of the request whose context this is.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// WithPrincipal returns ctx carrying p (for tests and internal calls).
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// ErrForbidden answers a tenant key used on an admin endpoint.
var ErrForbidden = problem.New(problem.KindForbidden, "forbidden", "this endpoint needs an admin key")

// AdminOnly is the middleware of the admin routes: it answers ErrForbidden (403) to every caller but an admin,
// before the route's handler runs. Modules mount their admin routes in a group that uses it,
//
//	r.Group(func(r chi.Router) {
//		r.Use(auth.AdminOnly)
//		r.Post("/api/v1/tenants", h.create)
//	})
//
// so that an admin route added to the group cannot forget the check. It runs after Middleware, which answers
// 401 to a request without a valid key before any route is matched.
func AdminOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p, ok := FromContext(r.Context()); !ok || !p.Admin {
			problem.Write(w, r, ErrForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// CanAccessTenant reports whether the caller may act on tenant id: admins on every tenant, a tenant key on its
// own. Handlers answer 404 otherwise, so that another tenant's existence is not revealed.
func CanAccessTenant(ctx context.Context, id uuid.UUID) bool {
	p, ok := FromContext(ctx)
	return ok && (p.Admin || p.TenantID == id)
}

// TenantKeys finds the stored hash of a tenant key that is not revoked; the tenant module provides it.
type TenantKeys interface {
	KeyHash(ctx context.Context, keyID string) (tenantID uuid.UUID, hash []byte, found bool, err error)
}

// Options configure the Authenticator.
type Options struct {
	Disabled  bool     // AUTH_MODE=disabled: every caller is an admin (local experiments only)
	AdminKeys []string // ADMIN_API_KEYS
	CacheTTL  time.Duration
}

// Authenticator is the HTTP middleware that authenticates /api requests.
type Authenticator struct {
	opts   Options
	admins [][]byte
	keys   TenantKeys
	log    *zap.Logger

	mu    sync.Mutex
	cache map[string]cached
	// byTenant indexes cache's found keys by tenant, so that a tenant's deletion drops its keys without a scan of
	// every cached key (up to 100,000) under mu, which every authenticated request takes.
	byTenant map[uuid.UUID]map[string]struct{}
}

type cached struct {
	tenantID uuid.UUID
	hash     []byte
	found    bool
	expires  time.Time
}

// New returns an Authenticator.
func New(opts Options, keys TenantKeys, log *zap.Logger) *Authenticator {
	a := &Authenticator{opts: opts, keys: keys, log: log.Named("auth"), cache: map[string]cached{},
		byTenant: map[uuid.UUID]map[string]struct{}{}}
	for _, k := range opts.AdminKeys {
		h := sha256.Sum256([]byte(k))
		a.admins = append(a.admins, h[:])
	}
	if opts.Disabled {
		a.log.Warn("AUTH_MODE=disabled: every request is treated as an admin's; use this for local experiments only")
	}
	return a
}

// public reports whether path is served without a key.
func public(path string) bool {
	return !strings.HasPrefix(path, "/api/")
}

// Middleware authenticates every /api request: a missing, malformed, unknown or revoked key answers 401 with
// WWW-Authenticate: Bearer.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if public(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		if a.opts.Disabled {
			next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), Principal{Admin: true})))
			return
		}
		p, err := a.authenticate(r.Context(), r.Header.Get("Authorization"))
		if err != nil {
			if problem.StatusOf(err) == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="msgsvc"`)
			}
			problem.Write(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
	})
}

var errUnauthorized = problem.New(problem.KindUnauthorized, "unauthorized", "a valid API key is required: Authorization: Bearer <key>")

func (a *Authenticator) authenticate(ctx context.Context, header string) (Principal, error) {
	scheme, key, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || key == "" {
		return Principal{}, errUnauthorized
	}
	key = strings.TrimSpace(key)
	h := sha256.Sum256([]byte(key))
	admin := false
	for _, ah := range a.admins {
		admin = equalHash(h[:], ah) || admin // no early exit: the time taken does not depend on which key matched
	}
	if admin {
		return Principal{Admin: true}, nil
	}
	id, secret, ok := Parse(key)
	if !ok {
		return Principal{}, errUnauthorized
	}
	c, err := a.lookup(ctx, id)
	if err != nil {
		return Principal{}, problem.Unavailable("dependency-unavailable", "cannot check the API key now; retry later", err)
	}
	if !c.found || !equalHash(Hash(secret), c.hash) {
		return Principal{}, errUnauthorized
	}
	return Principal{TenantID: c.tenantID, KeyID: id}, nil
}

// lookup finds a key's stored hash, remembering answers for CacheTTL: a revoked key stops working within it.
func (a *Authenticator) lookup(ctx context.Context, id string) (cached, error) {
	now := time.Now()
	a.mu.Lock()
	c, ok := a.cache[id]
	a.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c, nil
	}
	tenantID, hash, found, err := a.keys.KeyHash(ctx, id)
	if err != nil {
		return cached{}, err
	}
	c = cached{tenantID: tenantID, hash: hash, found: found, expires: now.Add(a.opts.CacheTTL)}
	a.mu.Lock()
	if len(a.cache) > 100_000 {
		clear(a.cache)
		clear(a.byTenant)
	}
	a.drop(id)
	a.cache[id] = c
	if c.found {
		ids := a.byTenant[c.tenantID]
		if ids == nil {
			ids = map[string]struct{}{}
			a.byTenant[c.tenantID] = ids
		}
		ids[id] = struct{}{}
	}
	a.mu.Unlock()
	return c, nil
}

// drop removes key id from the cache and its tenant's index; a.mu must be held.
func (a *Authenticator) drop(id string) {
	c, ok := a.cache[id]
	if !ok {
		return
	}
	delete(a.cache, id)
	if ids := a.byTenant[c.tenantID]; ids != nil {
		delete(ids, id)
		if len(ids) == 0 {
			delete(a.byTenant, c.tenantID)
		}
	}
}

// Forget drops a key from the cache (after a revocation on this replica).
func (a *Authenticator) Forget(id string) {
	a.mu.Lock()
	a.drop(id)
	a.mu.Unlock()
}

// ForgetTenant drops every cached key of a tenant (when it is deleted).
func (a *Authenticator) ForgetTenant(tenantID uuid.UUID) {
	a.mu.Lock()
	for id := range a.byTenant[tenantID] {
		delete(a.cache, id)
	}
	delete(a.byTenant, tenantID)
	a.mu.Unlock()
}
