package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/platform/config"
)

// Response is an HTTP answer with its decoded JSON body.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into v and fails t when it cannot.
func (r Response) JSON(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %q: %v", r.Body, err)
	}
}

// Map decodes the body as a JSON object.
func (r Response) Map(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	r.JSON(t, &m)
	return m
}

// Do sends a request with a JSON body (a string or []byte is sent as is, anything else is marshalled) and
// the given headers (name, value pairs). It authenticates with AdminKey unless the headers set Authorization
// (an empty value sends none).
func (a *App) Do(method, path string, body any, headers ...string) Response {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			a.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, a.URL+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+AdminKey)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	if req.Header.Get("Authorization") == "" {
		req.Header.Del("Authorization")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: out}
}

// CreateTenant creates a tenant with workers workers and returns its id.
func (a *App) CreateTenant(name string, workers int) string {
	a.t.Helper()
	r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": name, "concurrency_config": workers})
	if r.Status != http.StatusCreated {
		a.t.Fatalf("create tenant: %d %s", r.Status, r.Body)
	}
	return r.Map(a.t)["id"].(string)
}

// Publish publishes payload to tenant and returns the accepted message id.
func (a *App) Publish(tenant string, payload any, headers ...string) string {
	a.t.Helper()
	r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": payload}, headers...)
	if r.Status != http.StatusAccepted {
		a.t.Fatalf("publish: %d %s", r.Status, r.Body)
	}
	return r.Map(a.t)["id"].(string)
}

// DB opens a connection to the application's database, closed when t ends.
func (a *App) DB() *pgx.Conn {
	a.t.Helper()
	return Connect(a.t, a.Config.DatabaseURL)
}

// Connect opens a PostgreSQL connection closed when t ends.
func Connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// Count runs a count query.
func Count(t testing.TB, conn *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// AMQP opens a channel on amqpURL, closed when t ends.
func AMQP(t testing.TB, amqpURL string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.DialConfig(amqpURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// AnotherReplica returns cfg for one more replica of the same servers: the same database and virtual host, and
// a replica id of its own, named after name.
func AnotherReplica(cfg config.Config, name string) config.Config {
	cfg.ReplicaID = RandomName("replica-" + name + "-")
	return cfg
}

// AwaitEventsQueueConsumed waits until the replica cfg configures consumes its cluster-events queue, and returns
// the queue's name.
func AwaitEventsQueueConsumed(t testing.TB, cfg config.Config) string {
	t.Helper()
	queue := cfg.AMQPExchange + ".events." + cfg.ReplicaID
	Eventually(t, 30*time.Second, func() bool {
		ok, _, consumers := QueueState(t, cfg.AMQPURL, queue)
		return ok && consumers == 1
	}, "replica %s does not consume its events queue", cfg.ReplicaID)
	return queue
}

// QueueState returns a queue's ready messages and consumers, or exists=false.
func QueueState(t testing.TB, amqpURL, name string) (exists bool, messages, consumers int) {
	t.Helper()
	conn, err := amqp.DialConfig(amqpURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		return false, 0, 0
	}
	return true, q.Messages, q.Consumers
}
