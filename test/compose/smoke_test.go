// Package compose checks the Docker Compose stack from the outside, as a user would. `go tool task compose:smoke`
// (deployments/images/smoke.sh) brings deployments/docker-compose.yml up on the local images, runs
// TestComposeStackServesAUser against it and tears it down; without TEST_COMPOSE_MSGSVC_URL that test skips
// (fails with TEST_REQUIRE_COMPOSE=1). The other tests check the compose files without Docker.
package compose

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type stack struct {
	msgsvc, prometheus, adminKey string
}

func getStack(t *testing.T) stack {
	s := stack{
		msgsvc:     os.Getenv("TEST_COMPOSE_MSGSVC_URL"),
		prometheus: os.Getenv("TEST_COMPOSE_PROMETHEUS_URL"),
		adminKey:   os.Getenv("TEST_COMPOSE_ADMIN_KEY"),
	}
	if s.msgsvc == "" || s.prometheus == "" || s.adminKey == "" {
		msg := "no compose stack: TEST_COMPOSE_MSGSVC_URL, TEST_COMPOSE_PROMETHEUS_URL and TEST_COMPOSE_ADMIN_KEY are set by `go tool task compose:smoke`"
		if os.Getenv("TEST_REQUIRE_COMPOSE") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return s
}

func call(t *testing.T, method, url, key string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	require.NoError(t, err, "%s %s", method, url)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, out
}

// eventually polls cond every half second for up to timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestComposeStackServesAUser creates a tenant, publishes with the tenant's key, reads the message back, finds
// it counted in /metrics and finds Prometheus scraping the service.
func TestComposeStackServesAUser(t *testing.T) {
	s := getStack(t)

	status, body := call(t, http.MethodGet, s.msgsvc+"/readyz", "", nil)
	require.Equal(t, http.StatusOK, status, "readyz: %s", body)

	status, body = call(t, http.MethodPost, s.msgsvc+"/api/v1/tenants", s.adminKey,
		map[string]any{"name": "compose smoke", "concurrency_config": 2})
	require.Equal(t, http.StatusCreated, status, "create tenant: %s", body)
	var tenant struct {
		ID     string `json:"id"`
		APIKey string `json:"api_key"`
	}
	require.NoError(t, json.Unmarshal(body, &tenant))
	require.NotEmpty(t, tenant.ID)
	require.NotEmpty(t, tenant.APIKey, "the tenant's API key is shown on creation")
	t.Cleanup(func() { call(t, http.MethodDelete, s.msgsvc+"/api/v1/tenants/"+tenant.ID, s.adminKey, nil) })

	status, body = call(t, http.MethodPost, s.msgsvc+"/api/v1/messages", tenant.APIKey,
		map[string]any{"tenant_id": tenant.ID, "payload": map[string]any{"event": "signup", "user": 42}})
	require.Equal(t, http.StatusAccepted, status, "publish: %s", body)
	var accepted struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal(body, &accepted))

	var page struct {
		Data []struct {
			ID      string          `json:"id"`
			Payload json.RawMessage `json:"payload"`
		} `json:"data"`
	}
	eventually(t, 30*time.Second, func() bool {
		status, body = call(t, http.MethodGet, s.msgsvc+"/api/v1/messages?tenant_id="+tenant.ID, tenant.APIKey, nil)
		require.Equal(t, http.StatusOK, status, "read: %s", body)
		require.NoError(t, json.Unmarshal(body, &page))
		return len(page.Data) == 1
	}, "the published message is never listed")
	require.Equal(t, accepted.ID, page.Data[0].ID)
	require.JSONEq(t, `{"event":"signup","user":42}`, string(page.Data[0].Payload))

	// The service counts it, per tenant (compose sets METRICS_PER_TENANT).
	status, body = call(t, http.MethodGet, s.msgsvc+"/metrics", "", nil)
	require.Equal(t, http.StatusOK, status)
	for _, name := range []string{"msgsvc_messages_published_total", "msgsvc_messages_stored_total"} {
		v, ok := sample(string(body), name, tenant.ID)
		require.True(t, ok, "/metrics has no %s for the tenant:\n%s", name, grepLines(string(body), name))
		require.Equal(t, 1.0, v, "%s", name)
	}

	// Prometheus scrapes the service (and RabbitMQ) successfully.
	eventually(t, 60*time.Second, func() bool {
		status, body = call(t, http.MethodGet, s.prometheus+"/api/v1/targets?state=active", "", nil)
		if status != http.StatusOK {
			return false
		}
		var targets struct {
			Data struct {
				ActiveTargets []struct {
					Labels    map[string]string `json:"labels"`
					Health    string            `json:"health"`
					LastError string            `json:"lastError"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		require.NoError(t, json.Unmarshal(body, &targets))
		up := map[string]bool{}
		for _, tg := range targets.Data.ActiveTargets {
			up[tg.Labels["job"]] = tg.Health == "up"
		}
		return up["msgsvc"] && up["rabbitmq"]
	}, "Prometheus's targets msgsvc and rabbitmq are not both up")

	// And has the service's series.
	eventually(t, 60*time.Second, func() bool {
		status, body = call(t, http.MethodGet, s.prometheus+`/api/v1/query?query=up{job="msgsvc"}`, "", nil)
		return status == http.StatusOK && strings.Contains(string(body), `"value":[`) && strings.Contains(string(body), `,"1"]`)
	}, `Prometheus has no up{job="msgsvc"} = 1`)
}

// sample returns the value of the first series name{...tenant="id"...} in a Prometheus text exposition.
func sample(text, name, tenant string) (float64, bool) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{[^}]*tenant="` + regexp.QuoteMeta(tenant) + `"[^}]*\} (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

func grepLines(text, prefix string) string {
	var b strings.Builder
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			fmt.Fprintln(&b, l)
		}
	}
	return b.String()
}
