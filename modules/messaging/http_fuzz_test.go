package messaging

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/httpserver"
)

// noTenants is a directory in which no tenant exists: a request that passes validation answers 404 before it
// needs the broker, so the whole handler runs without servers.
type noTenants struct{}

func (noTenants) Tenants(context.Context) ([]events.Tenant, error) { return nil, nil }
func (noTenants) Tenant(context.Context, uuid.UUID) (events.Tenant, bool, error) {
	return events.Tenant{}, false, nil
}

// fuzzServer is the real router and middleware (body limits, panic recovery into 500) with the message
// handlers, an admin caller and small body limits, so that the fuzzer reaches them.
func fuzzServer() http.Handler {
	reg := prometheus.NewRegistry()
	svc := NewService(ServiceParams{Directory: noTenants{}, Config: config.Config{AMQPExchange: "msgsvc.messages"},
		Metrics: NewMetrics(reg, true), Log: zap.NewNop()})
	admin := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), auth.Principal{Admin: true})))
		})
	}
	return httpserver.New(httpserver.Options{MaxBodyBytes: 2048, MaxBatchBodyBytes: 8192, Authenticate: admin},
		zap.NewNop(), reg, []httpserver.Routes{NewHandlers(svc, 8192)}, nil).Handler()
}

const fuzzTenant = "0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"

var publishSeeds = []string{
	`{"tenant_id":"` + fuzzTenant + `","payload":{"event":"signup","user":42}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":[1,"x",null]}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":"text"}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":null}`,
	`{"tenant_id":"` + fuzzTenant + `"}`,
	`{"tenant_id":"nope","payload":{}}`,
	`{"tenant_id":7,"payload":{}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{},"x":1}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{"a":"\u0000"}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{"a":"\ud800"}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{"a":"\ud83d\ude00"}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{"n":1e1000000}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{"n":1e-20000}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{"n":-0.5e131071}}`,
	"{\"tenant_id\":\"" + fuzzTenant + "\",\"payload\":{\"a\":\"\xff\"}}",
	"{\"tenant_id\":\"" + fuzzTenant + "\",\"payload\":{\"a\":1}\x00}",
	`{"tenant_id":"{` + fuzzTenant + `}","payload":{}}`,
	`{"tenant_id":"` + strings.ToUpper(fuzzTenant) + `","payload":{}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
	``, `null`, `[]`, `{}`,
}

// FuzzPublishRequest sends arbitrary bodies, media types and idempotency keys through the real publish
// handler: the answer is a 4xx (404 for a valid request, as no tenant exists), never a 5xx or a panic, and a
// request that passes validation carries a payload PostgreSQL's jsonb accepts.
func FuzzPublishRequest(f *testing.F) {
	for _, s := range publishSeeds {
		f.Add([]byte(s), "application/json", "")
	}
	f.Add([]byte(publishSeeds[0]), "text/plain", "")
	f.Add([]byte(publishSeeds[0]), "", "")
	f.Add([]byte(publishSeeds[0]), "application/json", "order-42")
	f.Add([]byte(publishSeeds[0]), "application/json", strings.Repeat("k", 256))
	h := fuzzServer()
	f.Fuzz(func(t *testing.T, body []byte, contentType, idempotencyKey string) {
		code := serve(t, h, "/api/v1/messages", body, contentType, idempotencyKey)
		if code == http.StatusNotFound {
			var req PublishRequest
			if err := json.Unmarshal(body, &req); err != nil || !validPayload(req.Payload) {
				t.Fatalf("%q passed validation with payload %q", body, req.Payload)
			}
		}
	})
}

// FuzzBatchRequest does the same for the batch endpoint.
func FuzzBatchRequest(f *testing.F) {
	for _, s := range []string{
		`{"tenant_id":"` + fuzzTenant + `","messages":[{"payload":{"i":1}},{"payload":[2]}]}`,
		`{"tenant_id":"` + fuzzTenant + `","messages":[]}`,
		`{"tenant_id":"` + fuzzTenant + `"}`,
		`{"tenant_id":"` + fuzzTenant + `","messages":[{"payload":{}},{"payload":5}]}`,
		`{"tenant_id":"` + fuzzTenant + `","messages":[{"payload":{},"extra":1}]}`,
		`{"tenant_id":"` + fuzzTenant + `","messages":[{"payload":{"n":1e400000}}]}`,
		`{"tenant_id":"` + fuzzTenant + `","messages":[null]}`,
		`{"tenant_id":"` + fuzzTenant + `","messages":{"payload":{}}}`,
		`{"tenant_id":"x","messages":[{"payload":{}}]}`,
		`{"tenant_id":"` + fuzzTenant + `","messages":[` + strings.Repeat(`{"payload":{}},`, 300) + `{"payload":{}}]}`,
	} {
		f.Add([]byte(s), "application/json", "")
	}
	f.Add([]byte(`{"tenant_id":"`+fuzzTenant+`","messages":[{"payload":{}}]}`), "application/json", "batch-1")
	h := fuzzServer()
	f.Fuzz(func(t *testing.T, body []byte, contentType, idempotencyKey string) {
		code := serve(t, h, "/api/v1/messages/batch", body, contentType, idempotencyKey)
		if code == http.StatusNotFound {
			var req BatchRequest
			if err := json.Unmarshal(body, &req); err != nil || len(req.Messages) == 0 || len(req.Messages) > MaxBatch {
				t.Fatalf("%q passed validation", body)
			}
			for _, m := range req.Messages {
				if !validPayload(m.Payload) {
					t.Fatalf("%q passed validation with payload %q", body, m.Payload)
				}
			}
		}
	})
}

// FuzzListQuery sends arbitrary query strings to the list endpoint: 400 or 404 (no tenant exists), never a
// 5xx or a panic.
func FuzzListQuery(f *testing.F) {
	for _, q := range []string{"", "tenant_id=" + fuzzTenant, "tenant_id=bad", "tenant_id=" + fuzzTenant + "&limit=0",
		"tenant_id=" + fuzzTenant + "&limit=101", "tenant_id=" + fuzzTenant + "&cursor=bogus",
		"tenant_id=" + fuzzTenant + "&cursor=0000-01-01T00:00:00Z", "tenant_id=" + fuzzTenant + "&cursor=AQAGYT8fhmgAAZOlsHwefS-aSxwtPk9aaw",
		"tenant_id=" + fuzzTenant + "&tenant_id=x", "tenant_id=%00", "%zz"} {
		f.Add(q)
	}
	h := fuzzServer()
	f.Fuzz(func(t *testing.T, query string) {
		req := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/api/v1/messages", RawQuery: query},
			Header: http.Header{}, Body: http.NoBody, Host: "example.com", RequestURI: "/api/v1/messages?" + query}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest && rec.Code != http.StatusNotFound {
			t.Fatalf("query %q: status %d: %s", query, rec.Code, rec.Body)
		}
	})
}

// serve posts body to path and fails t unless the answer is a 4xx problem; it returns the status.
func serve(t *testing.T, h http.Handler, path string, body []byte, contentType, idempotencyKey string) int {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if idempotencyKey != "" {
		req.Header["Idempotency-Key"] = []string{idempotencyKey}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code < 400 || rec.Code >= 500 || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("%q (%s): status %d %s: %s", body, contentType, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	return rec.Code
}
