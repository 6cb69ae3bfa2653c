// Package console serves the operators' console, a few static files embedded in the binary, under /console/.
// The console is a page in the browser that uses only the public API, with the key the operator pastes (kept in
// the tab's sessionStorage, sent as a Bearer header; no cookies): it needs no build step, loads nothing from
// another host, and works without internet access. Every answer carries a strict Content-Security-Policy.
package console

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"

	"github.com/go-chi/chi/v5"
)

// Prefix is where the console is served; Prefix itself is its page.
const Prefix = "/console/"

// CSP is the Content-Security-Policy of every console answer: scripts, styles, images and API calls from this
// server only, no inline script or style, no plugins, and no framing.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

//go:embed ui
var ui embed.FS

// contentTypes are the media types of the files the console has.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// Handlers serve the console's page and assets.
type Handlers struct {
	files fs.FS
}

// New returns the console's handlers.
func New() *Handlers {
	files, err := fs.Sub(ui, "ui")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	return &Handlers{files: files}
}

// Register implements httpserver.Routes.
func (h *Handlers) Register(r chi.Router) {
	r.Get(strings.TrimSuffix(Prefix, "/"), h.redirect)
	r.Get(Prefix+"*", h.serve)
}

// redirect sends /console to /console/, so that the page's relative URLs resolve under it.
func (h *Handlers) redirect(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, Prefix, http.StatusFound)
}

// serve answers the page for Prefix and an embedded asset for Prefix + its name; anything else is 404.
func (h *Handlers) serve(w http.ResponseWriter, r *http.Request) {
	secure(w.Header())
	name := strings.TrimPrefix(r.URL.Path, Prefix)
	if name == "" {
		name = "index.html"
	}
	ct, known := contentTypes[path.Ext(name)]
	if !known || !fs.ValidPath(name) {
		http.NotFound(w, r)
		return
	}
	body, err := fs.ReadFile(h.files, name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(body)
}

// secure sets the headers every console answer carries.
func secure(h http.Header) {
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}
