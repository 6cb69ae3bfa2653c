package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/fx/fxtest"

	"github.com/acme/msgsvc/platform/health"
)

// serve mounts the probes on a router, as the HTTP server does, and answers GET path.
func serve(t *testing.T, p *health.Probes, path string) *httptest.ResponseRecorder {
	t.Helper()
	r := chi.NewRouter()
	p.Register(r)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec
}

func ok(context.Context) error { return nil }

func TestLivenessChecksNothing(t *testing.T) {
	called := false
	p := health.New([]health.Check{{Name: "database", Check: func(context.Context) error {
		called = true
		return errors.New("connection refused")
	}}})
	rec := serve(t, p, "/healthz")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.JSONEq(t, `{"status":"ok"}`, rec.Body.String())
	require.False(t, called, "liveness must not follow a dependency")
}

func TestReadyWhenEveryCheckPasses(t *testing.T) {
	var deadline bool
	p := health.New([]health.Check{
		{Name: "database", Check: ok},
		{Name: "broker", Check: func(ctx context.Context) error { _, deadline = ctx.Deadline(); return nil }},
	})
	rec := serve(t, p, "/readyz")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	require.JSONEq(t, `{"status":"ready","checks":{"database":"ok","broker":"ok"}}`, rec.Body.String())
	require.True(t, deadline, "a check runs with a deadline, so that a hung dependency cannot hang the probe")

	rec = serve(t, health.New(nil), "/readyz")
	require.Equal(t, http.StatusOK, rec.Code, "no checks: ready")
	require.JSONEq(t, `{"status":"ready","checks":{}}`, rec.Body.String())
}

func TestNotReadyNamesEachCheckThatIsDown(t *testing.T) {
	p := health.New([]health.Check{
		{Name: "database", Check: func(context.Context) error { return errors.New("migration 7 not applied") }},
		{Name: "broker", Check: ok},
		{Name: "cache", Check: func(context.Context) error { return errors.New("connection refused") }},
	})
	rec := serve(t, p, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
	var d map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &d))
	require.Equal(t, "https://msgsvc.dev/problems/not-ready", d["type"])
	require.Equal(t, float64(503), d["status"])
	require.Equal(t, "not ready: [database cache] down", d["detail"])
	require.Equal(t, "/readyz", d["instance"])
	require.Equal(t, []any{
		map[string]any{"field": "database", "detail": "down: migration 7 not applied"},
		map[string]any{"field": "cache", "detail": "down: connection refused"},
	}, d["errors"])
}

// TestChecksCollectsTheValueGroup: a check provided with AsCheck anywhere in the application reaches the
// probes through Checks.
func TestChecksCollectsTheValueGroup(t *testing.T) {
	var got []health.Check
	fxtest.New(t,
		fx.Provide(
			health.AsCheck(func() health.Check { return health.Check{Name: "database", Check: ok} }),
			health.AsCheck(func() health.Check {
				return health.Check{Name: "broker", Check: func(context.Context) error { return errors.New("down") }}
			}),
		),
		fx.Invoke(func(c health.Checks) { got = c.All }),
	).RequireStart().RequireStop()
	names := []string{}
	for _, c := range got {
		names = append(names, c.Name)
	}
	require.ElementsMatch(t, []string{"database", "broker"}, names)
	require.Equal(t, http.StatusServiceUnavailable, serve(t, health.New(got), "/readyz").Code)
}
