package swagger_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/stretchr/testify/require"

	apidocs "github.com/acme/msgsvc/api-docs"
	"github.com/acme/msgsvc/platform/swagger"
)

type fakeSpec string

func (s fakeSpec) ReadDoc() string { return string(s) }

func setup(t *testing.T, spec swagger.Spec) *httptest.Server {
	t.Helper()
	r := chi.NewRouter()
	swagger.New(spec).Register(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv
}

type answer struct {
	status   int
	header   http.Header
	body     string
	location string
}

func get(t *testing.T, url string) answer {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return answer{resp.StatusCode, resp.Header, string(b), resp.Header.Get("Location")}
}

func TestRedirectsToIndex(t *testing.T) {
	srv := setup(t, fakeSpec(`{}`))
	for _, p := range []string{"/swagger", "/swagger/"} {
		a := get(t, srv.URL+p)
		require.Equal(t, http.StatusFound, a.status, p)
		require.Equal(t, "/swagger/index.html", a.location, p)
	}
}

func TestServesPageConfigurationAndDocument(t *testing.T) {
	srv := setup(t, fakeSpec(`{"swagger":"2.0"}`))

	a := get(t, srv.URL+"/swagger/index.html")
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, "text/html; charset=utf-8", a.header.Get("Content-Type"))
	require.Contains(t, a.body, `<div id="swagger-ui">`)
	require.Contains(t, a.body, `./swagger-initializer.js`)
	require.NotContains(t, a.body, "http", "the page must load nothing from elsewhere")

	a = get(t, srv.URL+"/swagger/swagger-initializer.js")
	require.Equal(t, http.StatusOK, a.status)
	require.Contains(t, a.body, `url: "./doc.json"`)
	require.Contains(t, a.body, `validatorUrl: null`)
	require.NotContains(t, a.body, "petstore")

	a = get(t, srv.URL+"/swagger/doc.json")
	require.Equal(t, http.StatusOK, a.status)
	require.Equal(t, "application/json; charset=utf-8", a.header.Get("Content-Type"))
	require.JSONEq(t, `{"swagger":"2.0"}`, a.body)
}

func TestServesEmbeddedAssets(t *testing.T) {
	srv := setup(t, fakeSpec(`{}`))
	for path, ct := range map[string]string{
		"/swagger/swagger-ui-bundle.js": "javascript",
		"/swagger/swagger-ui.css":       "text/css",
		"/swagger/index.css":            "text/css",
		"/swagger/favicon-32x32.png":    "image/png",
	} {
		a := get(t, srv.URL+path)
		require.Equal(t, http.StatusOK, a.status, path)
		require.Contains(t, a.header.Get("Content-Type"), ct, path)
		require.NotEmpty(t, a.body, path)
	}
	require.Equal(t, http.StatusNotFound, get(t, srv.URL+"/swagger/nope.js").status)
	require.Equal(t, http.StatusNotFound, get(t, srv.URL+"/swagger/dist/").status)
}

// TestGeneratedDocumentUsesThePageHost guards what "Try it out" relies on: no host and no schemes in the
// document (the UI then calls the server that served the page), and paths that carry the /api/v1 prefix.
func TestGeneratedDocumentUsesThePageHost(t *testing.T) {
	var doc struct {
		Swagger  string                     `json:"swagger"`
		Host     string                     `json:"host"`
		BasePath string                     `json:"basePath"`
		Schemes  []string                   `json:"schemes"`
		Paths    map[string]json.RawMessage `json:"paths"`
	}
	require.NoError(t, json.Unmarshal([]byte(apidocs.SwaggerInfo.ReadDoc()), &doc))
	require.Equal(t, "2.0", doc.Swagger)
	require.Empty(t, doc.Host)
	require.Empty(t, doc.Schemes)
	require.Equal(t, "/", doc.BasePath)
	require.Contains(t, doc.Paths, "/api/v1/tenants")
	for p := range doc.Paths {
		require.True(t, strings.HasPrefix(p, "/api/v1/") || p == "/healthz" || p == "/readyz" || p == "/metrics", p)
	}
}
