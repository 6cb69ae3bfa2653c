package httpserver

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/problem"
)

// decodeTarget has the shapes the API's request bodies have: optional strings and numbers, raw JSON, and an
// array of objects.
type decodeTarget struct {
	Name     *string         `json:"name"`
	Count    *int            `json:"count"`
	Payload  json.RawMessage `json:"payload"`
	Messages []struct {
		Payload json.RawMessage `json:"payload"`
	} `json:"messages"`
}

type decodeRoutes struct{}

func (decodeRoutes) Register(r chi.Router) {
	r.Post("/decode", func(w http.ResponseWriter, r *http.Request) {
		var v decodeTarget
		if err := DecodeJSON(r, &v); err != nil {
			problem.Write(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	r.Post("/decode-large", func(w http.ResponseWriter, r *http.Request) {
		var v decodeTarget
		if err := DecodeJSONLimit(r, &v, 4096); err != nil {
			problem.Write(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	r.Get("/page", func(w http.ResponseWriter, r *http.Request) {
		if _, _, err := PageParams(r); err != nil {
			problem.Write(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// fuzzServer is the real router with its middleware (body limits, panic recovery into 500) and small limits,
// so that the fuzzer reaches them.
func fuzzServer() http.Handler {
	return New(Options{MaxBodyBytes: 1024, MaxBatchBodyBytes: 4096}, zap.NewNop(), prometheus.NewRegistry(),
		[]Routes{decodeRoutes{}}, nil).Handler()
}

// FuzzDecodeJSON sends arbitrary bodies with arbitrary media types through the server's middleware to
// DecodeJSON and DecodeJSONLimit: every answer is a success or a 4xx problem, never a 5xx or a panic, and a
// success means the body was one valid JSON object (or null, which leaves every field unset for validation to
// refuse) of UTF-8 within the limit.
func FuzzDecodeJSON(f *testing.F) {
	for _, seed := range []struct {
		body, contentType string
	}{
		{`{"name":"Acme","count":3}`, "application/json"},
		{`{"payload":{"a":[1,2,{"b":null}]},"messages":[{"payload":[]}]}`, "application/json; charset=utf-8"},
		{`{"name":"x"} {"name":"y"}`, "application/json"},
		{`{"name":`, "application/json"},
		{`{"name":"x","extra":1}`, "application/problem+json"},
		{`{"count":1e400}`, "application/json"},
		{`{"count":99999999999999999999}`, "application/json"},
		{`{"count":"3"}`, "application/json"},
		{"{\"name\":\"\xff\"}", "application/json"},
		{"{\"name\":\"a\x00b\"}", "application/json"},
		{`{"name":"\u0000"}`, "application/json"},
		{`{"name":"\ud800"}`, "application/json"},
		// Small seeds: the fuzzer minimises what they grow into byte by byte. Deep nesting with the real limits is
		// in test/e2e/malformed_test.go.
		{strings.Repeat("[", 300), "application/json"},
		{`{"payload":` + strings.Repeat(`{"a":`, 10) + `1` + strings.Repeat(`}`, 10) + `}`, "application/json"},
		{`{"name":"` + strings.Repeat("x", 1100) + `"}`, "application/json"},
		{``, "application/json"},
		{`null`, "application/json"},
		{`[]`, "application/json"},
		{`"text"`, "application/json"},
		{`{"name":"x"}`, "text/plain"},
		{`{"name":"x"}`, ""},
		{`{"name":"x"}`, "application/json;;;"},
		{`{"name":"x"}`, "multipart/form-data; boundary=x"},
	} {
		f.Add([]byte(seed.body), seed.contentType, false)
		f.Add([]byte(seed.body), seed.contentType, true)
	}
	h := fuzzServer()
	f.Fuzz(func(t *testing.T, body []byte, contentType string, large bool) {
		path, limit := "/decode", 1024
		if large {
			path, limit = "/decode-large", 4096
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code == http.StatusNoContent:
			trimmed := bytes.TrimSpace(body)
			if len(body) > limit || !utf8.Valid(body) || !json.Valid(trimmed) || (trimmed[0] != '{' && string(trimmed) != "null") {
				t.Fatalf("accepted %q (%s)", body, contentType)
			}
		case rec.Code >= 400 && rec.Code < 500:
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("%d answered as %q", rec.Code, ct)
			}
		default:
			t.Fatalf("%q (%s): status %d: %s", body, contentType, rec.Code, rec.Body)
		}
	})
}

// FuzzPageParams sends arbitrary query strings to PageParams: a success or a 400, never a 5xx or a panic,
// and a success has a limit within bounds.
func FuzzPageParams(f *testing.F) {
	for _, q := range []string{"", "limit=20", "limit=0", "limit=101", "limit=-1", "limit=1e2", "limit=+5",
		"limit=99999999999999999999", "cursor=", "cursor=bogus", "cursor=2026-11-27T10:00:00Z",
		"cursor=0000-01-01T00:00:00Z", "cursor=AQAGYT8fhmgAAZOlsHwefS-aSxwtPk9aaw", "limit=5&limit=6", "%zz", "cursor=%00"} {
		f.Add(q)
	}
	h := fuzzServer()
	f.Fuzz(func(t *testing.T, query string) {
		req := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/page", RawQuery: query}, Header: http.Header{},
			Body: http.NoBody, Host: "example.com", RequestURI: "/page?" + query}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusNoContent && rec.Code != http.StatusBadRequest {
			t.Fatalf("query %q: status %d: %s", query, rec.Code, rec.Body)
		}
		if rec.Code == http.StatusNoContent {
			limit, after, err := PageParams(req)
			if err != nil || limit < 1 || limit > 100 || (after != nil && after.CreatedAt.Year() < 1) {
				t.Fatalf("query %q: limit %d, cursor %v, err %v", query, limit, after, err)
			}
		}
	})
}
