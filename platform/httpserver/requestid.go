package httpserver

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/go-chi/chi/v5/middleware"
)

// requestIDs gives each request an id, as chi's middleware.RequestID does and in the same form
// (host/random-000001, or the client's X-Request-Id), stored under middleware.RequestIDKey so that
// middleware.GetReqID finds it; without fmt.Sprintf on every request.
type requestIDs struct {
	prefix string
	next   atomic.Uint64
}

func newRequestIDs() *requestIDs {
	host, err := os.Hostname()
	if host == "" || err != nil {
		host = "localhost"
	}
	var b64 string
	for len(b64) < 10 {
		var buf [12]byte
		_, _ = rand.Read(buf[:])
		b64 = strings.NewReplacer("+", "", "/", "").Replace(base64.StdEncoding.EncodeToString(buf[:]))
	}
	return &requestIDs{prefix: host + "/" + b64[:10]}
}

// id returns the next request id: the prefix, a dash and the count, at least six digits.
func (g *requestIDs) id() string {
	var num [20]byte
	n := strconv.AppendUint(num[:0], g.next.Add(1), 10)
	b := make([]byte, 0, len(g.prefix)+1+max(len(n), 6))
	b = append(append(b, g.prefix...), '-')
	for range 6 - len(n) {
		b = append(b, '0')
	}
	return string(append(b, n...))
}

func (g *requestIDs) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(middleware.RequestIDHeader)
		if id == "" {
			id = g.id()
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), middleware.RequestIDKey, id)))
	})
}
