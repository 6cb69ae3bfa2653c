package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

func TestKeyFormat(t *testing.T) {
	key, id, hash := NewKey()
	require.True(t, strings.HasPrefix(key, Prefix))
	gotID, secret, ok := Parse(key)
	require.True(t, ok)
	require.Equal(t, id, gotID)
	require.Equal(t, hash, Hash(secret))
	require.GreaterOrEqual(t, len(secret), 40, "256 bits of randomness")
	other, _, _ := NewKey()
	require.NotEqual(t, key, other)
	for _, bad := range []string{"", "msk_", "msk_short", "xyz_AAAAAAAAAAAA_secret", "msk_AAAAAAAAAAAAXsecret"} {
		_, _, ok := Parse(bad)
		require.False(t, ok, bad)
	}
}

// memKeys is an in-memory TenantKeys that counts lookups.
type memKeys struct {
	rows map[string]struct {
		tenant uuid.UUID
		hash   []byte
	}
	lookups int
}

func (m *memKeys) KeyHash(_ context.Context, id string) (uuid.UUID, []byte, bool, error) {
	m.lookups++
	r, ok := m.rows[id]
	return r.tenant, r.hash, ok, nil
}

func TestMiddleware(t *testing.T) {
	tenant := uuid.New()
	key, id, hash := NewKey()
	keys := &memKeys{rows: map[string]struct {
		tenant uuid.UUID
		hash   []byte
	}{id: {tenant, hash}}}
	a := New(Options{AdminKeys: []string{"admin-key-0123456789"}, CacheTTL: time.Minute}, keys, zap.NewNop())
	var got Principal
	h := a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = FromContext(r.Context())
	}))
	call := func(path, authz string) int {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		got = Principal{}
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusUnauthorized {
			require.Equal(t, `Bearer realm="msgsvc"`, rec.Header().Get("WWW-Authenticate"))
		}
		return rec.Code
	}
	require.Equal(t, 200, call("/healthz", ""), "probes are public")
	require.Equal(t, 401, call("/api/v1/tenants", ""))
	require.Equal(t, 401, call("/api/v1/tenants", "Basic abc"))
	require.Equal(t, 401, call("/api/v1/tenants", "Bearer nope"))
	require.Equal(t, 401, call("/api/v1/tenants", "Bearer "+key+"x"))
	require.Equal(t, 200, call("/api/v1/tenants", "Bearer admin-key-0123456789"))
	require.True(t, got.Admin)
	require.Equal(t, 200, call("/api/v1/tenants", "bearer "+key))
	require.Equal(t, Principal{TenantID: tenant, KeyID: id}, got)
	require.Equal(t, 200, call("/api/v1/messages", "Bearer "+key))
	require.Equal(t, 1, keys.lookups, "one lookup per key id within the cache TTL")

	ctx := WithPrincipal(context.Background(), got)
	require.True(t, CanAccessTenant(ctx, tenant))
	require.False(t, CanAccessTenant(ctx, uuid.New()))

	a.ForgetTenant(tenant)
	delete(keys.rows, id)
	require.Equal(t, 401, call("/api/v1/messages", "Bearer "+key), "a forgotten, deleted key is refused")
}

// TestAdminGroup: a route registered in a group that uses AdminOnly, whose handler checks nothing itself,
// refuses a tenant key with 403 (and a caller Middleware did not authenticate), serves an admin, and leaves
// the routes outside the group alone.
func TestAdminGroup(t *testing.T) {
	r := chi.NewRouter()
	served := 0
	ok := func(w http.ResponseWriter, _ *http.Request) { served++ }
	r.Get("/api/v1/tenants/{id}", ok)
	r.Group(func(r chi.Router) {
		r.Use(AdminOnly)
		r.Get("/api/v1/tenants", ok)
		r.Delete("/api/v1/tenants/{id}", ok)
	})
	call := func(method, path string, p *Principal) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		if p != nil {
			req = req.WithContext(WithPrincipal(req.Context(), *p))
		}
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		return rec
	}
	tenantKey := &Principal{TenantID: uuid.New(), KeyID: "AAAAAAAAAAAA"}
	admin := &Principal{Admin: true}
	id := "/api/v1/tenants/" + tenantKey.TenantID.String()

	for _, c := range []struct {
		method, path string
		who          *Principal
	}{{"GET", "/api/v1/tenants", tenantKey}, {"DELETE", id, tenantKey}, {"GET", "/api/v1/tenants", nil}, {"DELETE", id, nil}} {
		rec := call(c.method, c.path, c.who)
		require.Equal(t, http.StatusForbidden, rec.Code, "%s %s", c.method, c.path)
		require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
		require.Contains(t, rec.Body.String(), `"type":"https://msgsvc.dev/problems/forbidden"`)
		require.Contains(t, rec.Body.String(), `"instance":"`+c.path+`"`)
	}
	require.Zero(t, served, "the handlers never ran for a caller that is not an admin")

	require.Equal(t, http.StatusOK, call("GET", "/api/v1/tenants", admin).Code)
	require.Equal(t, http.StatusOK, call("DELETE", id, admin).Code)
	require.Equal(t, http.StatusOK, call("GET", id, tenantKey).Code, "a route outside the group is not guarded")
	require.Equal(t, 3, served)
	require.Equal(t, http.StatusMethodNotAllowed, call("PUT", id, tenantKey).Code, "routing answers before the guard")
}

func TestDisabled(t *testing.T) {
	a := New(Options{Disabled: true}, &memKeys{}, zap.NewNop())
	var got Principal
	h := a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got, _ = FromContext(r.Context()) }))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/tenants", nil))
	require.Equal(t, 200, rec.Code)
	require.True(t, got.Admin)
}

// A deleted tenant's cached keys are all dropped, whichever key was cached when, and no other tenant's: the next
// request with one of them asks the store again, and the other tenant's key is still served from the cache.
func TestForgetTenantDropsOnlyThatTenantsKeys(t *testing.T) {
	gone, kept := uuid.New(), uuid.New()
	keys := &memKeys{rows: map[string]struct {
		tenant uuid.UUID
		hash   []byte
	}{}}
	var goneKeys []string
	for range 3 {
		key, id, hash := NewKey()
		keys.rows[id] = struct {
			tenant uuid.UUID
			hash   []byte
		}{gone, hash}
		goneKeys = append(goneKeys, key)
	}
	keptKey, keptID, keptHash := NewKey()
	keys.rows[keptID] = struct {
		tenant uuid.UUID
		hash   []byte
	}{kept, keptHash}
	a := New(Options{CacheTTL: time.Minute}, keys, zap.NewNop())
	auth := func(key string) error {
		_, err := a.authenticate(context.Background(), "Bearer "+key)
		return err
	}
	for _, k := range append(goneKeys, keptKey) {
		require.NoError(t, auth(k))
	}
	require.Equal(t, 4, keys.lookups)
	for _, k := range goneKeys {
		id, _, _ := Parse(k)
		delete(keys.rows, id)
	}
	a.ForgetTenant(gone)
	for _, k := range goneKeys {
		require.Error(t, auth(k), "a deleted tenant's key still works from the cache")
	}
	require.Equal(t, 7, keys.lookups, "each of the deleted tenant's keys was looked up again")
	require.NoError(t, auth(keptKey))
	require.Equal(t, 7, keys.lookups, "the other tenant's key was dropped from the cache")
	a.mu.Lock()
	defer a.mu.Unlock()
	require.Len(t, a.byTenant, 1, "the index keeps only the other tenant")
}
