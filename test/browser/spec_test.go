package browser_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/test/testenv"
)

// TestDocumentMatchesRoutes checks that the document names exactly the routes the service serves (besides
// Swagger UI's and the console's own), with the same methods and paths, so that what the UI shows is what "Try it
// out" reaches.
func TestDocumentMatchesRoutes(t *testing.T) {
	s := testenv.Get(t)
	var srv *httpserver.Server
	a := testenv.Start(t, s.Config(t), fx.Populate(&srv))

	routes, ok := srv.Handler().(chi.Routes)
	require.True(t, ok, "the server's handler is a chi router")
	var served []operation
	require.NoError(t, chi.Walk(routes, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if strings.HasPrefix(route, "/swagger") || strings.HasPrefix(route, "/console") {
			return nil
		}
		if len(route) > 1 {
			route = strings.TrimSuffix(route, "/") // chi names a sub-router's root "/api/v1/tenants/"
		}
		served = append(served, operation{Method: method, Path: route})
		return nil
	}))
	slices.SortFunc(served, func(a, b operation) int { return strings.Compare(a.String(), b.String()) })

	require.Equal(t, served, specOperations(t, a.URL), "api-docs must document every served route and no other")
}
