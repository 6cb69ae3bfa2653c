package e2e

import (
	"net/http"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/problem"
	"github.com/acme/msgsvc/test/testenv"
)

// TestUnknownTenantIsOneProblem asks every module's API about a tenant that does not exist (as the admin) and
// about another tenant (with a tenant's key): the tenant API, publishing, reading messages, the stats and the
// dead-letter API all answer the same problem, 404 tenant-not-found with the same title and detail.
func TestUnknownTenantIsOneProblem(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	missing := uuid.NewString()
	other, _ := createTenantWithKey(t, a, "other")
	_, key := createTenantWithKey(t, a, "own")
	asTenant := []string{"Authorization", "Bearer " + key}

	want := problem.Details{Type: problem.TypeBase + "tenant-not-found", Title: "Not Found", Status: http.StatusNotFound,
		Detail: "no tenant with this id"}
	for _, c := range []struct {
		method, path string
		body         any
		headers      []string
	}{
		{http.MethodGet, "/api/v1/tenants/" + missing, nil, nil},
		{http.MethodGet, "/api/v1/tenants/" + other, nil, asTenant},
		{http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": missing, "payload": map[string]int{}}, nil},
		{http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": other, "payload": map[string]int{}}, asTenant},
		{http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": missing,
			"messages": []map[string]any{{"payload": map[string]int{}}}}, nil},
		{http.MethodGet, "/api/v1/messages?tenant_id=" + missing, nil, nil},
		{http.MethodGet, "/api/v1/tenants/" + missing + "/stats", nil, nil},
		{http.MethodGet, "/api/v1/tenants/" + missing + "/dead-letters", nil, nil},
		{http.MethodPost, "/api/v1/tenants/" + missing + "/dead-letters/replay", nil, nil},
	} {
		name := c.method + " " + c.path
		r := a.Do(c.method, c.path, c.body, c.headers...)
		require.Equal(t, http.StatusNotFound, r.Status, "%s: %s", name, r.Body)
		require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"), name)
		var got problem.Details
		r.JSON(t, &got)
		require.Equal(t, want, problem.Details{Type: got.Type, Title: got.Title, Status: got.Status, Detail: got.Detail}, name)
		require.Empty(t, got.Errors, name)
	}
}
