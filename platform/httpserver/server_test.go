package httpserver

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/problem"
)

// echoRoutes answers the decoded body, or the problem DecodeJSON found.
type echoRoutes struct{}

func (echoRoutes) Register(r chi.Router) {
	r.Post("/api/v1/echo", func(w http.ResponseWriter, r *http.Request) {
		var v map[string]any
		if err := DecodeJSON(r, &v); err != nil {
			problem.Write(w, r, err)
			return
		}
		WriteJSON(w, http.StatusOK, v)
	})
}

func testServer(maxBody int64) http.Handler {
	return New(Options{MaxBodyBytes: maxBody, MaxBatchBodyBytes: 4 * maxBody}, zap.NewNop(), prometheus.NewRegistry(),
		[]Routes{echoRoutes{}}, nil).Handler()
}

// TestRequestIDs: every problem answer names its request: the client's X-Request-Id, or one the server made
// (host/random-000001, counting up).
func TestRequestIDs(t *testing.T) {
	h := testServer(1024)
	requestID := func(header string) string {
		req := httptest.NewRequest(http.MethodGet, "/nowhere", nil)
		if header != "" {
			req.Header.Set("X-Request-Id", header)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, http.StatusNotFound, rec.Code)
		var p struct {
			RequestID string `json:"request_id"`
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
		return p.RequestID
	}
	require.Equal(t, "client-7", requestID("client-7"))
	first, second := requestID(""), requestID("")
	form := regexp.MustCompile(`^[^/]+/[A-Za-z0-9]{10}-[0-9]{6,}$`)
	require.Regexp(t, form, first)
	require.Regexp(t, form, second)
	require.NotEqual(t, first, second)
}

// TestBodyLimits: DecodeJSON applies HTTP_MAX_BODY_BYTES whether the client announces the length or not.
func TestBodyLimits(t *testing.T) {
	h := testServer(64)
	post := func(body string, chunked bool) int {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/echo", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if chunked {
			req.ContentLength = -1
			req.Body = io.NopCloser(bytes.NewReader([]byte(body))) // no length announced
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	small := `{"a":"` + strings.Repeat("x", 40) + `"}`
	large := `{"a":"` + strings.Repeat("x", 100) + `"}` // over 64, under the batch limit
	huge := `{"a":"` + strings.Repeat("x", 300) + `"}`  // over every limit
	for _, chunked := range []bool{false, true} {
		require.Equal(t, http.StatusOK, post(small, chunked), "chunked %v", chunked)
		require.Equal(t, http.StatusRequestEntityTooLarge, post(large, chunked), "chunked %v", chunked)
		require.Equal(t, http.StatusRequestEntityTooLarge, post(huge, chunked), "chunked %v", chunked)
	}
}
