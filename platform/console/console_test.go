package console_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/console"
)

func setup(t *testing.T) *httptest.Server {
	t.Helper()
	r := chi.NewRouter()
	console.New().Register(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv
}

type answer struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, url string) answer {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{resp.StatusCode, resp.Header, string(b)}
}

func TestRedirectsToPage(t *testing.T) {
	srv := setup(t)
	a := get(t, srv.URL+"/console")
	require.Equal(t, http.StatusFound, a.status)
	require.Equal(t, "/console/", a.header.Get("Location"))
}

func TestServesEmbeddedFilesWithAStrictPolicy(t *testing.T) {
	srv := setup(t)
	for path, ct := range map[string]string{
		"/console/":            "text/html; charset=utf-8",
		"/console/index.html":  "text/html; charset=utf-8",
		"/console/app.js":      "text/javascript; charset=utf-8",
		"/console/console.css": "text/css; charset=utf-8",
		"/console/favicon.svg": "image/svg+xml",
	} {
		a := get(t, srv.URL+path)
		require.Equal(t, http.StatusOK, a.status, path)
		require.Equal(t, ct, a.header.Get("Content-Type"), path)
		require.NotEmpty(t, a.body, path)
		csp := a.header.Get("Content-Security-Policy")
		require.Equal(t, console.CSP, csp, path)
		require.Equal(t, "nosniff", a.header.Get("X-Content-Type-Options"), path)
		require.Empty(t, a.header.Get("Set-Cookie"), path)
	}
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		require.Contains(t, console.CSP, want)
	}
	require.NotContains(t, console.CSP, "unsafe")

	page := get(t, srv.URL+"/console/").body
	require.Contains(t, page, `<script type="module" src="app.js"></script>`)
	require.NotContains(t, page, "http", "the page must load nothing from another host")
	require.NotContains(t, page, "style=", "no inline style: the policy forbids it")
	require.Equal(t, 1, strings.Count(page, "<script"), "no inline script: the policy forbids it")
	js := get(t, srv.URL+"/console/app.js").body
	require.NotContains(t, js, "innerHTML", "API data is rendered as text, never parsed as HTML")
	require.NotContains(t, js, "document.cookie")
}

func TestUnknownPathsAre404(t *testing.T) {
	srv := setup(t)
	for _, path := range []string{"/console/nope.js", "/console/missing", "/console/ui/app.js", "/console/../go.mod", "/console/console.go", "/console/sub/"} {
		a := get(t, srv.URL+path)
		require.Equal(t, http.StatusNotFound, a.status, path)
		require.Equal(t, console.CSP, a.header.Get("Content-Security-Policy"), path)
	}
}
