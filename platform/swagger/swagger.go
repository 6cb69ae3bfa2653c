// Package swagger serves Swagger UI and the service's OpenAPI document under /swagger/. Every asset is
// embedded in the binary (Swagger UI's distribution comes from github.com/swaggo/files/v2), so the UI works
// without internet access; the document names no host, so "Try it out" calls the server that served the page.
package swagger

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
	swaggerfiles "github.com/swaggo/files/v2"
)

// Prefix is where the UI is served; Prefix + "index.html" is its page and Prefix + "doc.json" the document.
const Prefix = "/swagger/"

//go:embed ui/index.html ui/swagger-initializer.js
var ui embed.FS

// Spec is the OpenAPI document the UI shows. The swag-generated api-docs.SwaggerInfo is one.
type Spec interface {
	// ReadDoc returns the document as JSON.
	ReadDoc() string
}

// Handlers serve the UI's page, its configuration, the document and Swagger UI's static assets.
type Handlers struct {
	spec   Spec
	page   []byte
	init   []byte
	assets http.Handler
}

// New returns the handlers that serve spec with Swagger UI.
func New(spec Spec) *Handlers {
	page, err := fs.ReadFile(ui, "ui/index.html")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	init, err := fs.ReadFile(ui, "ui/swagger-initializer.js")
	if err != nil {
		panic(err)
	}
	return &Handlers{
		spec:   spec,
		page:   page,
		init:   init,
		assets: http.StripPrefix(Prefix, http.FileServer(http.FS(swaggerfiles.FS))),
	}
}

// Register implements httpserver.Routes.
func (h *Handlers) Register(r chi.Router) {
	r.Get(strings.TrimSuffix(Prefix, "/"), h.redirect)
	r.Get(Prefix, h.redirect)
	r.Get(Prefix+"index.html", h.serve("text/html; charset=utf-8", h.page))
	r.Get(Prefix+"swagger-initializer.js", h.serve("text/javascript; charset=utf-8", h.init))
	r.Get(Prefix+"doc.json", h.doc)
	r.Get(Prefix+"*", h.asset)
}

// redirect sends /swagger and /swagger/ to the UI's page.
func (h *Handlers) redirect(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, Prefix+"index.html", http.StatusFound)
}

func (h *Handlers) serve(contentType string, body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(body)
	}
}

// doc serves the OpenAPI document.
func (h *Handlers) doc(w http.ResponseWriter, r *http.Request) {
	h.serve("application/json; charset=utf-8", []byte(h.spec.ReadDoc()))(w, r)
}

// asset serves Swagger UI's static files. Their index.html and swagger-initializer.js (which shows a demo
// document) are replaced by this package's own, registered above.
func (h *Handlers) asset(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, Prefix)
	if name == "" || strings.HasSuffix(name, "/") {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "public, max-age=86400")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	h.assets.ServeHTTP(w, r)
}
