package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

var binDir string

func TestMain(m *testing.M) {
	var err error
	binDir, err = os.MkdirTemp("", "msgsvc-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(binDir)
	os.Exit(code)
}

// env turns cfg into the service's environment variables; extra (NAME=value) override them.
func env(cfg config.Config, extra ...string) []string {
	e := []string{
		"AUTH_MODE=" + cfg.AuthMode,
		"ADMIN_API_KEYS=" + strings.Join(cfg.AdminAPIKeys, ","),
		"LOG_LEVEL=info",
		"LOG_FORMAT=json",
		"DATABASE_URL=" + cfg.DatabaseURL,
		"AMQP_URL=" + cfg.AMQPURL,
		"RABBITMQ_MANAGEMENT_URL=" + cfg.RabbitMQManagementURL,
		"AMQP_EXCHANGE=" + cfg.AMQPExchange,
		"AMQP_RECONNECT_INTERVAL=" + cfg.AMQPReconnectInterval.String(),
		"PUBLISH_CONFIRM_TIMEOUT=" + cfg.PublishConfirmTimeout.String(),
		"CONSUMER_DRAIN_TIMEOUT=" + cfg.ConsumerDrainTimeout.String(),
		"SHUTDOWN_TIMEOUT=" + cfg.ShutdownTimeout.String(),
		"RECONCILE_INTERVAL=" + cfg.ReconcileInterval.String(),
		"CONSUMER_BATCH_SIZE=" + strconv.Itoa(cfg.ConsumerBatchSize),
		"CONSUMER_PREFETCH_PER_WORKER=" + strconv.Itoa(cfg.PrefetchPerWorker),
		"STORE_RETRY_BUDGET=" + cfg.StoreRetryBudget.String(),
	}
	return append(e, extra...)
}

// startProc runs the service binary (built once per test binary) with cfg as environment variables and a
// replica id of its own, and waits until /readyz answers 200; it is killed when t ends.
func startProc(t *testing.T, name string, cfg config.Config, extra ...string) *testenv.Server {
	t.Helper()
	binary := filepath.Join(binDir, "server")
	require.NoError(t, testenv.BuildServer(context.Background(), "", testenv.ServerPackage, binary))
	return testenv.RunServer(t, testenv.ServerOptions{Name: name, Binary: binary,
		Env: env(cfg, append([]string{"REPLICA_ID=" + testenv.RandomName(name+"-")}, extra...)...)})
}

// call sends an API request authenticated with the admin key, with a JSON body when body is not nil, and
// returns the answer's status and body.
func call(client *http.Client, method, url string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+testenv.AdminKey)
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// createTenant creates a tenant over HTTP at baseURL and returns its id.
func createTenant(t *testing.T, baseURL, name string, workers int) string {
	t.Helper()
	status, raw, err := call(http.DefaultClient, http.MethodPost, baseURL+"/api/v1/tenants",
		fmt.Appendf(nil, `{"name":%q,"concurrency_config":%d}`, name, workers))
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, string(raw))
	var tn struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal(raw, &tn))
	return tn.ID
}

// metric sums the samples of a Prometheus series on baseURL's /metrics: every label combination, or only
// those whose labels contain each of match (such as `reason="retry_budget"`).
func metric(t *testing.T, baseURL, name string, match ...string) float64 {
	t.Helper()
	resp, err := http.Get(baseURL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if !strings.HasPrefix(rest, "{") && !strings.HasPrefix(rest, " ") {
			continue
		}
		skip := false
		for _, m := range match {
			skip = skip || !strings.Contains(rest, m)
		}
		if skip {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		require.NoError(t, err, line)
		sum += v
	}
	return sum
}
