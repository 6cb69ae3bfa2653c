package messaging

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

var (
	jsonbOnce sync.Once
	jsonbConn *pgx.Conn
)

// jsonbAccepts asks PostgreSQL (TEST_DATABASE_URL) whether jsonb takes raw; ok is false without a database.
func jsonbAccepts(t *testing.T, raw []byte) (accepts, ok bool) {
	t.Helper()
	jsonbOnce.Do(func() {
		if url := os.Getenv("TEST_DATABASE_URL"); url != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			jsonbConn, _ = pgx.Connect(ctx, url) // without a database only the other properties are checked
		}
	})
	if jsonbConn == nil {
		return false, false
	}
	var out string
	err := jsonbConn.QueryRow(context.Background(), "SELECT $1::text::jsonb::text", string(raw)).Scan(&out)
	return err == nil, true
}

// FuzzPayload checks the payload validation that publishing and consuming share: it never panics, a payload
// it accepts is a JSON object or array, storablePayload agrees with it on valid JSON, decodeDelivery accepts
// exactly what it accepts, and (with TEST_DATABASE_URL) PostgreSQL's jsonb takes every payload it accepts: a
// message answered 202 can always be stored.
func FuzzPayload(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `{"a":[1,2,{"b":null}]}`, ` {"é":"ü"} `, `[1,"x",true,false,null]`,
		`{"a":"\u0000"}`, `{"a":"\\u0000"}`, `{"a":"\ud800"}`, `{"a":"\udc00"}`, `{"a":"\ud800\udc00"}`,
		`{"a":"\ud800\u0041"}`, `{"a":"\uD83D\uDE00"}`, `["\ud800x"]`,
		`[1e131071]`, `[1e131072]`, `[0.1e-16383]`, `[1e-16383]`, `[0e-16384]`, `[0e999999999]`, `[-0]`,
		`[12345678901234567890.123456789e-16373]`, `[1E+400]`, `[1.5e-16382]`, `[0.00001e131076]`,
		`{"n":1e1000000}`, `{"n":1e-20000}`, `[0.1e-16382]`, `[10.5e-16382]`, `[` + strings.Repeat("9", 100) + `e131000]`,
		`1`, `"s"`, `null`, `{`, `{"a":1}x`, "{\"a\":\"\xff\"}", "[\"\x00\"]", "",
		strings.Repeat("[", 50) + strings.Repeat("]", 50),
	} {
		f.Add([]byte(s))
	}
	tenant := uuid.New()
	f.Fuzz(func(t *testing.T, raw []byte) {
		ok := validPayload(raw)
		if json.Valid(raw) && storablePayload(raw) != ok {
			t.Fatalf("storablePayload(%q) = %v, validPayload = %v", raw, !ok, ok)
		}
		_, err := decodeDelivery(tenant, amqp.Delivery{MessageId: uuid.NewString(), Body: raw}, time.Now())
		if (err == nil) != ok {
			t.Fatalf("decodeDelivery(%q): %v, validPayload = %v", raw, err, ok)
		}
		if !ok {
			return
		}
		if trimmed := strings.TrimSpace(string(raw)); trimmed[0] != '{' && trimmed[0] != '[' {
			t.Fatalf("accepted %q, not an object or array", raw)
		}
		if accepts, asked := jsonbAccepts(t, raw); asked && !accepts {
			t.Fatalf("accepted %q, which PostgreSQL's jsonb refuses", raw)
		}
	})
}
