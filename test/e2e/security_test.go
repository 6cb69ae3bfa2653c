package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// createWithKey creates a tenant and returns its id and API key.
func createWithKey(t *testing.T, a *testenv.App, name string) (id, key, keyID string) {
	t.Helper()
	r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": name, "concurrency_config": 1})
	require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
	m := r.Map(t)
	key = m["api_key"].(string)
	require.True(t, strings.HasPrefix(key, "msk_"))
	require.Greater(t, len(key), 40)
	return m["id"].(string), key, m["api_key_id"].(string)
}

func TestAuthorizationMatrix(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	tenant, own, _ := createWithKey(t, a, "own")
	_, other, _ := createWithKey(t, a, "other")
	revokedKey := func() string {
		r := a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/api-keys", nil)
		require.Equal(t, http.StatusCreated, r.Status)
		m := r.Map(t)
		require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant+"/api-keys/"+m["key_id"].(string), nil).Status)
		return m["api_key"].(string)
	}()
	keys := map[string]string{
		"none":    "",
		"unknown": "msk_AAAAAAAAAAAA_" + strings.Repeat("x", 43),
		"garbage": "not-a-key",
		"revoked": revokedKey,
		"admin":   testenv.AdminKey,
		"own":     own,
		"other":   other,
	}
	payload := map[string]any{"tenant_id": tenant, "payload": map[string]int{"n": 1}}
	batch := map[string]any{"tenant_id": tenant, "messages": []any{map[string]any{"payload": map[string]int{"n": 2}}}}
	type endpoint struct {
		method, path string
		body         func() any
		want         map[string]int // by principal; unauthenticated ones are always 401
	}
	scratchTenant := func() string { return a.CreateTenant("scratch", 1) }
	scratchKey := func() string {
		r := a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/api-keys", nil)
		return r.Map(t)["key_id"].(string)
	}
	adminOnly := func(okStatus int) map[string]int {
		return map[string]int{"admin": okStatus, "own": 403, "other": 403}
	}
	endpoints := []endpoint{
		{"POST", "/api/v1/tenants", func() any { return map[string]any{"name": "x"} }, adminOnly(201)},
		{"GET", "/api/v1/tenants", nil, adminOnly(200)},
		{"GET", "/api/v1/tenants/" + tenant, nil, map[string]int{"admin": 200, "own": 200, "other": 404}},
		{"PUT", "/api/v1/tenants/" + tenant + "/config/concurrency", func() any { return map[string]int{"workers": 2} }, adminOnly(200)},
		{"PUT", "/api/v1/tenants/" + tenant + "/config/rate-limit", func() any { return map[string]any{"messages_per_second": nil} }, adminOnly(200)},
		{"POST", "/api/v1/tenants/" + tenant + "/api-keys", nil, adminOnly(201)},
		{"DELETE", "/api/v1/tenants/" + tenant + "/api-keys/{key}", nil, adminOnly(204)},
		{"POST", "/api/v1/messages", func() any { return payload }, map[string]int{"admin": 202, "own": 202, "other": 404}},
		{"POST", "/api/v1/messages/batch", func() any { return batch }, map[string]int{"admin": 202, "own": 202, "other": 404}},
		{"GET", "/api/v1/messages?tenant_id=" + tenant, nil, map[string]int{"admin": 200, "own": 200, "other": 404}},
		{"GET", "/api/v1/tenants/" + tenant + "/dead-letters", nil, adminOnly(200)},
		{"POST", "/api/v1/tenants/" + tenant + "/dead-letters/replay", nil, adminOnly(200)},
		{"GET", "/api/v1/tenants/" + tenant + "/dead-letters/" + uuid.NewString(), nil, adminOnly(404)},
		{"POST", "/api/v1/tenants/" + tenant + "/dead-letters/" + uuid.NewString() + "/replay", nil, adminOnly(404)},
		{"DELETE", "/api/v1/tenants/" + tenant + "/dead-letters/" + uuid.NewString(), nil, adminOnly(404)},
		{"GET", "/api/v1/tenants/" + tenant + "/stats", nil, map[string]int{"admin": 200, "own": 200, "other": 404}},
		{"DELETE", "/api/v1/tenants/{scratch}", nil, adminOnly(204)},
	}
	for _, e := range endpoints {
		for who, key := range keys {
			want, ok := e.want[who]
			if !ok {
				want = http.StatusUnauthorized
			}
			path := e.path
			if strings.Contains(path, "{key}") {
				path = strings.Replace(path, "{key}", scratchKey(), 1)
			}
			if strings.Contains(path, "{scratch}") {
				path = strings.Replace(path, "{scratch}", scratchTenant(), 1)
			}
			var body any
			if e.body != nil {
				body = e.body()
			}
			auth := ""
			if key != "" {
				auth = "Bearer " + key
			}
			r := a.Do(e.method, path, body, "Authorization", auth)
			require.Equal(t, want, r.Status, "%s %s as %s: %s", e.method, e.path, who, r.Body)
			if want == http.StatusUnauthorized {
				require.Equal(t, `Bearer realm="msgsvc"`, r.Header.Get("WWW-Authenticate"))
			}
			if r.Status >= 400 {
				require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
			}
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		require.Equal(t, http.StatusOK, a.Do(http.MethodGet, path, nil, "Authorization", "").Status, path)
	}

	// No key material in the logs (at any level) nor in /metrics.
	metrics := scrape(t, a.URL)
	for _, key := range []string{own, other, revokedKey, testenv.AdminKey} {
		secret := key[len(key)-20:]
		require.NotContains(t, metrics, secret)
		for _, e := range a.Logs.All() {
			require.NotContains(t, fmt.Sprint(e.Message, e.ContextMap()), secret, "key material logged")
		}
	}
}

func TestKeyRotation(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	tenant, oldKey, oldID := createWithKey(t, a, "rotating")
	get := func(key string) int {
		return a.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil, "Authorization", "Bearer "+key).Status
	}
	r := a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/api-keys", nil)
	require.Equal(t, http.StatusCreated, r.Status)
	m := r.Map(t)
	newKey := m["api_key"].(string)
	require.Equal(t, tenant, m["tenant_id"])
	require.Equal(t, http.StatusOK, get(oldKey), "old key works until revoked")
	require.Equal(t, http.StatusOK, get(newKey))
	require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant+"/api-keys/"+oldID, nil).Status)
	require.Equal(t, http.StatusUnauthorized, get(oldKey))
	require.Equal(t, http.StatusOK, get(newKey))
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant+"/api-keys/"+oldID, nil).Status, "already revoked")
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodPost, "/api/v1/tenants/"+uuid.NewString()+"/api-keys", nil).Status)
	// A key of a deleted tenant stops working.
	require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant, nil).Status)
	require.Equal(t, http.StatusUnauthorized, a.Do(http.MethodGet, "/api/v1/messages?tenant_id="+tenant, nil, "Authorization", "Bearer "+newKey).Status)
}

func TestRateLimit(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	tenant, key, _ := createWithKey(t, a, "limited")
	r := a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/rate-limit", map[string]any{"messages_per_second": 2})
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.EqualValues(t, 2, r.Map(t)["rate_limit"])
	for _, bad := range []string{`{"messages_per_second":-1}`, `{"messages_per_second":"fast"}`} {
		require.Equal(t, http.StatusBadRequest, a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/rate-limit", bad).Status)
	}

	publish := func() testenv.Response {
		return a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]int{}},
			"Authorization", "Bearer "+key)
	}
	var limited testenv.Response
	accepted := 0
	for range 10 {
		if limited = publish(); limited.Status == http.StatusTooManyRequests {
			break
		}
		require.Equal(t, http.StatusAccepted, limited.Status)
		accepted++
	}
	require.Equal(t, http.StatusTooManyRequests, limited.Status)
	require.GreaterOrEqual(t, accepted, 2)
	require.Equal(t, "application/problem+json", limited.Header.Get("Content-Type"))
	retry, err := strconv.Atoi(limited.Header.Get("Retry-After"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, retry, 1)
	// A batch larger than the burst can never pass.
	big := a.Do(http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": tenant,
		"messages": []any{map[string]any{"payload": map[string]int{}}, map[string]any{"payload": map[string]int{}}, map[string]any{"payload": map[string]int{}}}})
	require.Equal(t, http.StatusTooManyRequests, big.Status)

	time.Sleep(time.Duration(retry) * time.Second)
	require.Equal(t, http.StatusAccepted, publish().Status, "recovers after Retry-After")
	require.Contains(t, scrape(t, a.URL), `msgsvc_messages_rate_limited_total{tenant="`+tenant+`"}`)

	// Back to the default (unlimited here): no more 429.
	require.Equal(t, http.StatusOK, a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/rate-limit", `{"messages_per_second":null}`).Status)
	for range 10 {
		require.Equal(t, http.StatusAccepted, publish().Status)
	}
}
