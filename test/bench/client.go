package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

// do sends one request and reads the whole answer, so that the connection is reused.
func (r *runner) do(ctx context.Context, method, url string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+r.adminKey)
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// createTenant creates a tenant over HTTP and returns its id.
func (r *runner) createTenant(ctx context.Context, s *server, name string, workers int) (uuid.UUID, error) {
	body, _ := json.Marshal(map[string]any{"name": name, "concurrency_config": workers})
	status, out, err := r.do(ctx, http.MethodPost, s.URL+"/api/v1/tenants", body)
	if err != nil {
		return uuid.Nil, err
	}
	if status != http.StatusCreated {
		return uuid.Nil, fmt.Errorf("create tenant: HTTP %d: %s", status, bytes.TrimSpace(out))
	}
	var t struct{ ID uuid.UUID }
	if err := json.Unmarshal(out, &t); err != nil {
		return uuid.Nil, fmt.Errorf("create tenant: %w", err)
	}
	return t.ID, nil
}

// createTenants creates n tenants with clients concurrent requests and returns their ids and each creation's
// latency. With retried, it behaves as a client would: a 503 (a dependency was too slow, such as a quorum queue
// whose cluster did not form in time on an overloaded broker) is retried after a pause, up to 5 times, counted
// in retried, and the latency includes the retries.
func (r *runner) createTenants(ctx context.Context, s *server, prefix string, n, workers, clients int, retried *atomic.Int64) ([]uuid.UUID, []time.Duration, error) {
	ids := make([]uuid.UUID, n)
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range min(clients, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				var id uuid.UUID
				var err error
				for try := 0; ; try++ {
					id, err = r.createTenant(ctx, s, fmt.Sprintf("%s-%04d", prefix, i), workers)
					// createTenant reports a non-201 answer as "create tenant: HTTP <status>: <body>".
					if err == nil || retried == nil || !strings.Contains(err.Error(), "HTTP 503") || try == 5 {
						break
					}
					retried.Add(1)
					time.Sleep(time.Second)
				}
				lat[i] = time.Since(t0)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				ids[i] = id
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return ids, lat, firstErr
}

// makePayload returns a JSON object of exactly size bytes.
func makePayload(seq, size int) []byte {
	head := `{"seq":` + strconv.Itoa(seq) + `,"kind":"bench","pad":"`
	tail := `"}`
	n := max(0, size-len(head)-len(tail))
	return []byte(head + strings.Repeat("x", n) + tail)
}
