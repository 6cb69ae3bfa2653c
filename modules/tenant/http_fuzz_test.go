package tenant

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/database"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/problem"
)

var fuzzLimits = Limits{DefaultConcurrency: 3, MaxConcurrency: 100}

// fuzzServer is the real router and middleware with the tenant handlers, an admin caller and small body
// limits. Its database refuses every connection, so a request that passes validation answers 503
// (dependency-unavailable) where a running service would create or change the tenant.
func fuzzServer(f *testing.F) http.Handler {
	db, err := database.Open(database.Options{URL: "postgres://fuzz:fuzz@127.0.0.1:1/fuzz?sslmode=disable&connect_timeout=1",
		MaxOpenConns: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = db.Close() })
	svc := NewService(db, NewRepository(db), events.NewBus(), fuzzLimits, nil, nil, zap.NewNop())
	admin := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), auth.Principal{Admin: true})))
		})
	}
	return httpserver.New(httpserver.Options{MaxBodyBytes: 2048, MaxBatchBodyBytes: 2048, Authenticate: admin},
		zap.NewNop(), prometheus.NewRegistry(), []httpserver.Routes{NewHandlers(svc)}, nil).Handler()
}

// send sends body with contentType to method path and returns the answer; it fails t on anything but a 4xx
// problem or a 503 for the missing database.
func send(t *testing.T, h http.Handler, method, path string, body []byte, contentType string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, "/", bytes.NewReader(body))
	req.URL.Path, req.RequestURI = path, path // any bytes, as a client can send them
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var p problem.Details
	if rec.Header().Get("Content-Type") != "application/problem+json" || json.Unmarshal(rec.Body.Bytes(), &p) != nil {
		t.Fatalf("%s %q %q: status %d, not a problem: %s", method, path, body, rec.Code, rec.Body)
	}
	if (rec.Code < 400 || rec.Code >= 500) && !(rec.Code == http.StatusServiceUnavailable && strings.HasSuffix(p.Type, "/dependency-unavailable")) {
		t.Fatalf("%s %q %q: status %d: %s", method, path, body, rec.Code, rec.Body)
	}
	return rec.Code, p.Type
}

// decodes reports whether DecodeJSON takes body with contentType into dst.
func decodes(body []byte, contentType string, dst any) error {
	req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return httpserver.DecodeJSONLimit(req, dst, 2048)
}

// FuzzCreateTenant sends arbitrary bodies and media types to POST /api/v1/tenants: a 4xx, or (valid input)
// the 503 of the missing database, never another 5xx or a panic; the handler agrees with the decoder and the
// validation, and what passes is a name PostgreSQL can store and a worker count within the limits.
func FuzzCreateTenant(f *testing.F) {
	for _, s := range []string{
		`{"name":"Acme Corp","concurrency_config":5}`, `{"name":"  Acme  "}`, `{"name":"x","concurrency_config":100}`,
		`{"name":`, `not json`, `[]`, `null`, `{}`, `{"name":"x","extra":1}`, `{"name":5}`,
		`{"name":"x","concurrency_config":"5"}`, `{"name":"x","concurrency_config":1.5}`, `{"name":"x","concurrency_config":1e400}`,
		`{"name":"x","concurrency_config":99999999999999999999}`, `{"name":"x","concurrency_config":-1}`,
		`{"name":"x","concurrency_config":0}`, `{"name":"x","concurrency_config":101}`, `{"name":"   "}`,
		`{"name":"` + strings.Repeat("n", 256) + `"}`, `{"name":"` + strings.Repeat("é", 255) + `"}`,
		`{"name":"a\u0000b"}`, "{\"name\":\"a\x00b\"}", "{\"name\":\"\xff\"}", `{"name":"\ud800"}`,
		`{"name":"x"} {"name":"y"}`, `{"name":"x","name":"y"}`, strings.Repeat("[", 300),
	} {
		f.Add([]byte(s), "application/json")
	}
	f.Add([]byte(`{"name":"x"}`), "text/plain")
	f.Add([]byte(`{"name":"x"}`), "")
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		var req CreateRequest
		err := decodes(body, contentType, &req)
		var name string
		if err == nil {
			name, err = validateName(req.Name)
		}
		if err == nil {
			_, err = fuzzLimits.validateConcurrency("concurrency_config", req.ConcurrencyConfig, false)
		}
		code, _ := send(t, h, http.MethodPost, "/api/v1/tenants", body, contentType)
		if err != nil {
			if code != problem.StatusOf(err) {
				t.Fatalf("%q: handler answered %d, validation %d (%v)", body, code, problem.StatusOf(err), err)
			}
			return
		}
		if code != http.StatusServiceUnavailable {
			t.Fatalf("%q: valid, yet the handler answered %d", body, code)
		}
		if !utf8.Valid(body) || !utf8.ValidString(name) || strings.ContainsRune(name, 0) || name != strings.TrimSpace(name) ||
			name == "" || utf8.RuneCountInString(name) > 255 {
			t.Fatalf("%q: name %q passed validation", body, name)
		}
	})
}

// FuzzTenantConfig sends arbitrary bodies to the resize and rate-limit endpoints, and arbitrary tenant ids in
// their paths: a 4xx, or (valid input) the 503 of the missing database.
func FuzzTenantConfig(f *testing.F) {
	id := "0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"
	for _, s := range []string{`{"workers":10}`, `{"workers":0}`, `{"workers":101}`, `{}`, `{"workers":"3"}`,
		`{"threads":3}`, `{"workers":1e9}`, `{"workers":null}`, `{"workers":3,"workers":4}`} {
		f.Add(id, false, []byte(s))
	}
	for _, s := range []string{`{"messages_per_second":100}`, `{"messages_per_second":0}`, `{"messages_per_second":null}`,
		`{"messages_per_second":-1}`, `{"messages_per_second":1e10}`, `{"messages_per_second":1e400}`,
		`{"messages_per_second":"5"}`, `{"messages_per_second":5e-324}`} {
		f.Add(id, true, []byte(s))
	}
	f.Add("zzz", false, []byte(`{"workers":2}`))
	f.Add("{"+id+"}", true, []byte(`{"messages_per_second":1}`))
	f.Add(strings.ToUpper(id), false, []byte(`{"workers":2}`))
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, tenant string, rateLimit bool, body []byte) {
		path := "/api/v1/tenants/" + tenant + "/config/concurrency"
		if rateLimit {
			path = "/api/v1/tenants/" + tenant + "/config/rate-limit"
		}
		code, _ := send(t, h, http.MethodPut, path, body, "application/json")
		if code != http.StatusServiceUnavailable {
			return
		}
		// Past validation: the id was a UUID and the body a valid request.
		if _, err := httpserver.ParseUUID("id", tenant); err != nil {
			t.Fatalf("%q: malformed id passed", tenant)
		}
		if rateLimit {
			var req RateLimitRequest
			if err := decodes(body, "application/json", &req); err != nil || (req.MessagesPerSecond != nil &&
				(*req.MessagesPerSecond < 0 || *req.MessagesPerSecond > 1e9)) {
				t.Fatalf("%q: invalid rate limit passed", body)
			}
			return
		}
		var req ConcurrencyRequest
		if err := decodes(body, "application/json", &req); err != nil || req.Workers == nil || *req.Workers < 1 || *req.Workers > 100 {
			t.Fatalf("%q: invalid worker count passed", body)
		}
	})
}
