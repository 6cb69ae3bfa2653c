package messaging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/httpserver"
)

// jsonSeeds are values at the edges of JSON's grammar, valid and not.
var jsonSeeds = []string{
	`{}`, `[]`, ` { } `, `{"a":1}`, `{"a":[1,2,{"b":null}]}`, `[true,false,null]`, `"x"`, `0`, `-0`, `1.5e+10`, `-12.25E-3`,
	`01`, `1.`, `.5`, `1e`, `-`, `+1`, `1e+`, `tru`, `nul`, `[1,]`, `{"a":1,}`, `{"a" 1}`, `{a:1}`, `[1 2]`, `{"a":1}}`,
	`"\u00e9\n\t\"\\\/\b\f\r"`, `"\x"`, `"\u12"`, `"\u12g4"`, "\"a\x01b\"", "\"\xff\"", `"unterminated`, ``, ` `,
	`[` + strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600) + `]`, `{"a":"\ud800"}`, `[1e1000000]`, "[1]\x00",
}

// TestValidJSONMatchesEncodingJSON: the fast scanner accepts exactly what json.Valid accepts.
func TestValidJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range jsonSeeds {
		require.Equal(t, json.Valid([]byte(s)), validJSON([]byte(s)), "%q", s)
	}
}

func FuzzValidJSON(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if json.Valid(b) != validJSON(b) {
			t.Fatalf("%q: json.Valid %v, validJSON %v", b, json.Valid(b), validJSON(b))
		}
	})
}

// publishBodies are publish bodies the fast path takes, and unusual ones it leaves to the strict decoder.
var publishBodies = append([]string{
	string(publishBody),
	` { "payload" : [1, {"a":"b"}] , "tenant_id" : "` + fuzzTenant + `" } `,
	`{"payload":{}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{},"tenant_id":"` + fuzzTenant + `"}`,
	`{"Tenant_ID":"` + fuzzTenant + `","payload":{}}`,
	`{"tenant_id":"\u0030193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b","payload":{}}`,
	`{"tenant_id":null,"payload":{}}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{}} x`,
	`{"tenant_id":"` + fuzzTenant + `","payload":{"a":1}`,
	`{"tenant_id":"` + fuzzTenant + `","payload":` + strings.Repeat("[", 600) + strings.Repeat("]", 600) + `}`,
}, publishSeeds...)

// TestParsePublishMatchesDecoder: whatever the fast path takes, the strict decoder takes too, with the same
// result; the rest it leaves to the strict decoder.
func TestParsePublishMatchesDecoder(t *testing.T) {
	took := 0
	for _, s := range publishBodies {
		if checkParsePublish(t, []byte(s)) {
			took++
		}
	}
	require.GreaterOrEqual(t, took, 3, "the usual bodies take the fast path")
	var req PublishRequest
	require.True(t, parsePublish(publishBody, &req))
	require.Equal(t, fuzzTenant, *req.TenantID)
	require.Equal(t, payload512, []byte(req.Payload))
}

func FuzzParsePublish(f *testing.F) {
	for _, s := range publishBodies {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { checkParsePublish(t, body) })
}

// checkParsePublish reports whether the fast path took body, and fails t when the strict decoder disagrees.
// Bodies that are not UTF-8 never reach either (httpserver.ReadJSON refuses them).
func checkParsePublish(t *testing.T, body []byte) bool {
	t.Helper()
	if !utf8.Valid(body) {
		return false
	}
	var fast PublishRequest
	if !parsePublish(body, &fast) {
		return false
	}
	var strict PublishRequest
	require.NoError(t, httpserver.DecodeJSONBody(body, &strict), "%q", body)
	require.Equal(t, strict.TenantID, fast.TenantID, "%q", body)
	require.True(t, bytes.Equal(strict.Payload, fast.Payload), "%q: %q vs %q", body, strict.Payload, fast.Payload)
	return true
}

// TestAcceptedJSON: the hand-written answer is byte for byte encoding/json's.
func TestAcceptedJSON(t *testing.T) {
	for _, at := range []time.Time{time.Now().UTC().Truncate(time.Microsecond), time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 120000000, time.UTC)} {
		a := Accepted{ID: uuid.Must(uuid.NewV7()), TenantID: uuid.New(), Status: "accepted", CreatedAt: at}
		var want bytes.Buffer
		require.NoError(t, json.NewEncoder(&want).Encode(a))
		require.Equal(t, want.String(), string(a.appendJSON(nil)))
	}
}
