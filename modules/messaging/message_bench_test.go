package messaging

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/httpserver"
)

// payload512 is a 512-byte JSON object, the benchmark harness's payload size.
var payload512 = []byte(`{"event":"signup","user":42,"data":"` + strings.Repeat("x", 512-37) + `"}`)

// publishBody is a publish request's body with a 512-byte payload.
var publishBody = []byte(`{"tenant_id":"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b","payload":` + string(payload512) + `}`)

// decodePublish is what the publish handler does with a request before publishing it (its usual body, which
// takes the fast path).
func decodePublish(b *testing.B, r *http.Request) {
	body, err := httpserver.ReadJSON(r)
	if err != nil {
		b.Fatal(err)
	}
	var req PublishRequest
	if !parsePublish(body, &req) {
		b.Fatal("the usual body did not take the fast path")
	}
	if _, err := parseTenantID(req.TenantID); err != nil {
		b.Fatal(err)
	}
	if err := checkPayload("payload", req.Payload); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkDecodePublishRequest(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(publishBody)))
	for b.Loop() {
		r := httptest.NewRequest("POST", "/api/v1/messages", bytes.NewReader(publishBody))
		r.Header.Set("Content-Type", "application/json")
		decodePublish(b, r)
	}
}

// BenchmarkDecodePublishBody is BenchmarkDecodePublishRequest without building the request: what the service
// does per request.
func BenchmarkDecodePublishBody(b *testing.B) {
	r := httptest.NewRequest("POST", "/api/v1/messages", nil)
	r.Header.Set("Content-Type", "application/json")
	rd := bytes.NewReader(publishBody)
	b.ReportAllocs()
	b.SetBytes(int64(len(publishBody)))
	for b.Loop() {
		rd.Reset(publishBody)
		r.Body, r.ContentLength = io.NopCloser(rd), int64(len(publishBody))
		decodePublish(b, r)
	}
}

func BenchmarkDecodeDelivery(b *testing.B) {
	tenant := uuid.New()
	d := amqp.Delivery{MessageId: uuid.Must(uuid.NewV7()).String(), Body: payload512,
		Headers: amqp.Table{HeaderCreatedAt: time.Now().UnixMicro()}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeDelivery(tenant, d, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeAccepted(b *testing.B) {
	a := Accepted{ID: uuid.Must(uuid.NewV7()), TenantID: uuid.New(), Status: "accepted", CreatedAt: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(a); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeBatch(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"tenant_id":"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b","messages":[`)
	for i := range 100 {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"payload":` + string(payload512) + `}`)
	}
	sb.WriteString(`]}`)
	body := []byte(sb.String())
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		r := httptest.NewRequest("POST", "/api/v1/messages/batch", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		var req BatchRequest
		if err := httpserver.DecodeJSONLimit(r, &req, 8<<20); err != nil {
			b.Fatal(err)
		}
		for _, m := range req.Messages {
			if err := checkPayload("payload", m.Payload); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkPublishHandler is one POST /api/v1/messages through the real router, middleware (request id,
// metrics and access log, panic recovery, body limit, admin key check), handler, tenant check, rate limit and
// coalescer, down to the AMQP message being built; only the broker's write and confirm are left out (the
// envelope publisher answers at once).
func BenchmarkPublishHandler(b *testing.B) {
	reg := prometheus.NewRegistry()
	svc := NewService(ServiceParams{Directory: noTenants{}, Config: config.Config{AMQPExchange: "msgsvc.messages",
		PublishConfirmTimeout: 5 * time.Second}, Metrics: NewMetrics(reg, true), Log: zap.NewNop()})
	tenant := uuid.MustParse("0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b")
	svc.view.add(events.Tenant{ID: tenant})
	var sink broker.Message
	svc.coal = newCoalescers(time.Millisecond, 1024, svc.publishTimeout,
		func(_ context.Context, tenantID uuid.UUID, take func() ([]broker.EnvelopeItem, bool)) error {
			items, ok := take()
			if ok {
				sink = svc.message(tenantID, items)
			}
			return nil
		}, func(n int) { svc.metrics.perPublish.Observe(float64(n)) })
	authn := auth.New(auth.Options{AdminKeys: []string{"bench-admin-key"}}, nil, zap.NewNop())
	h := httpserver.New(httpserver.Options{MaxBodyBytes: 1 << 20, MaxBatchBodyBytes: 8 << 20, Authenticate: authn.Middleware},
		zap.NewNop(), reg, []httpserver.Routes{NewHandlers(svc, 8<<20)}, nil).Handler()
	r := httptest.NewRequest("POST", "/api/v1/messages", nil)
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Authorization", "Bearer bench-admin-key")
	rd := bytes.NewReader(publishBody)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	b.SetBytes(int64(len(publishBody)))
	for b.Loop() {
		rd.Reset(publishBody)
		r.Body, r.ContentLength = io.NopCloser(rd), int64(len(publishBody))
		clear(w.h)
		w.status = 0
		h.ServeHTTP(w, r)
		if w.status != http.StatusAccepted {
			b.Fatalf("status %d", w.status)
		}
	}
	_ = sink
}

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}
func (w *discardWriter) WriteHeader(s int) { w.status = s }

// BenchmarkDecodeDeliveries decodes what a worker takes in scenario 1 of test/bench: three envelopes of four
// 512-byte messages.
func BenchmarkDecodeDeliveries(b *testing.B) {
	tenant := uuid.New()
	ds := make([]amqp.Delivery, 3)
	for i := range ds {
		items := make([]broker.EnvelopeItem, 4)
		for j := range items {
			items[j] = broker.EnvelopeItem{ID: uuid.Must(uuid.NewV7()), CreatedAt: time.Now().UnixMicro(), Payload: payload512}
		}
		ds[i] = amqp.Delivery{Body: broker.EncodeEnvelope(items),
			Headers: amqp.Table{broker.HeaderEnvelope: int32(len(items)), HeaderCreatedAt: time.Now().UnixMicro()}}
	}
	b.ReportAllocs()
	for b.Loop() {
		errs := make([]error, len(ds))
		if items := decodeBatch(tenant, ds, time.Now(), errs); len(items) != 12 {
			b.Fatal(len(items), errs)
		}
	}
}
