package e2e

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

func TestApplicationStartsReadyAndStopsCleanly(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))

	require.Equal(t, http.StatusOK, testenv.Status(a.URL+"/healthz"))
	require.Equal(t, http.StatusOK, testenv.Status(a.URL+"/readyz"))

	resp, err := http.Get(a.URL + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Contains(t, string(body), "go_goroutines")
	require.Contains(t, string(body), "process_resident_memory_bytes")

	start := time.Now()
	require.NoError(t, a.Stop())
	require.Less(t, time.Since(start), a.Config.ShutdownTimeout)
	require.Equal(t, 0, testenv.Status(a.URL+"/healthz"), "the server still answers after stop")
}

func TestMigrationsAppliedOnceWhenTwoApplicationsStartTogether(t *testing.T) {
	s := testenv.Get(t)
	cfgA := s.Config(t)
	cfgB := testenv.AnotherReplica(cfgA, "b")

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, cfg := range []config.Config{cfgA, cfgB} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = testenv.TryStart(t, cfg)
		}()
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, cfgA.DatabaseURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var versions, distinct int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT version) FROM schema_migrations").Scan(&versions, &distinct))
	require.Equal(t, distinct, versions)
	require.Positive(t, versions)
}

func TestUnknownRouteIsProblemDetails(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	resp, err := http.Get(a.URL + "/nope")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json"))
}
