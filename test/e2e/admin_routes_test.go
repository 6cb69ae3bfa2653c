package e2e

import (
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/test/testenv"
)

// tenantRoutes are the /api routes a tenant key may call (on its own tenant); every other /api route is an
// admin's.
var tenantRoutes = map[string]bool{
	"GET /api/v1/tenants/{id}":       true,
	"GET /api/v1/tenants/{id}/stats": true,
	"POST /api/v1/messages":          true,
	"POST /api/v1/messages/batch":    true,
	"GET /api/v1/messages":           true,
	"GET /api/v1/messages/{id}":      true,
}

// TestEveryOtherRouteRefusesATenantKey walks the application's router: every /api route that is not one of
// tenantRoutes answers 403 to a tenant's own key on its own tenant, whichever module registered it, so a new
// admin route that is not mounted in its module's auth.AdminOnly group fails here.
func TestEveryOtherRouteRefusesATenantKey(t *testing.T) {
	s := testenv.Get(t)
	var srv *httpserver.Server
	a := testenv.Start(t, s.Config(t), fx.Populate(&srv))
	tenant, key, _ := createWithKey(t, a, "own")

	param := regexp.MustCompile(`\{[a-z_]+\}`)
	seen := map[string]bool{}
	admin := 0
	err := chi.Walk(srv.Handler().(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if !strings.HasPrefix(route, "/api/") {
			return nil
		}
		if len(route) > 1 {
			route = strings.TrimSuffix(route, "/")
		}
		name := method + " " + route
		seen[name] = true
		if tenantRoutes[name] {
			return nil
		}
		admin++
		path := strings.Replace(route, "{id}", tenant, 1)
		path = param.ReplaceAllStringFunc(path, func(string) string { return uuid.NewString() })
		r := a.Do(method, path, nil, "Authorization", "Bearer "+key)
		require.Equal(t, http.StatusForbidden, r.Status, "%s as the tenant: %s", name, r.Body)
		require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
		return nil
	})
	require.NoError(t, err)
	for name := range tenantRoutes {
		require.True(t, seen[name], "%s is not a route any more: update tenantRoutes", name)
	}
	require.GreaterOrEqual(t, admin, 12, "the admin routes of the tenant and dead-letter APIs: %v", seen)
	require.Equal(t, http.StatusOK, a.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil).Status, "the tenant is still there")
}
