package messaging

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/platform/httpserver"
)

// payload512 is a 512-byte JSON object, the benchmark harness's payload size.
var payload512 = []byte(`{"event":"signup","user":42,"data":"` + strings.Repeat("x", 512-37) + `"}`)

// publishBody is a publish request's body with a 512-byte payload.
var publishBody = []byte(`{"tenant_id":"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b","payload":` + string(payload512) + `}`)

// decodePublish is what the publish handler does with a request before publishing it.
func decodePublish(b *testing.B, r *http.Request) {
	var req PublishRequest
	if err := httpserver.DecodeJSON(r, &req); err != nil {
		b.Fatal(err)
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
