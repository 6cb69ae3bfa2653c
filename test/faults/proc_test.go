package faults

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

var (
	binDir    string
	buildOnce sync.Once
	buildErr  error
	binary    string
)

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

// serverBinary builds cmd/server once per test binary and returns its path.
func serverBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binary = filepath.Join(binDir, "server")
		out, err := exec.Command("go", "build", "-o", binary, "github.com/acme/msgsvc/cmd/server").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/server: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildErr)
	return binary
}

// proc is the service running as a separate OS process.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	URL  string

	mu   sync.Mutex
	logs bytes.Buffer

	done     chan struct{} // closed when the process exited
	exitedAt time.Time
	state    *os.ProcessState
}

// env turns cfg into the service's environment variables; extra (NAME=value) override them.
func env(cfg config.Config, extra ...string) []string {
	e := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"HTTP_ADDR=127.0.0.1:0",
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

// startProc runs the service binary with cfg (as environment variables) and waits until /readyz answers 200.
func startProc(t *testing.T, name string, cfg config.Config, extra ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, done: make(chan struct{})}
	p.cmd = exec.Command(serverBinary(t))
	p.cmd.Env = env(cfg, append([]string{"REPLICA_ID=" + testenv.RandomName(name+"-")}, extra...)...)
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	p.cmd.Stdout = io.Discard
	require.NoError(t, p.cmd.Start())
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Bytes()
			p.mu.Lock()
			p.logs.Write(line)
			p.logs.WriteByte('\n')
			p.mu.Unlock()
			if bytes.Contains(line, []byte(`"msg":"listening"`)) {
				var l struct {
					Addr string `json:"addr"`
				}
				if json.Unmarshal(line, &l) == nil {
					addr <- l.Addr
				}
			}
		}
		_ = p.cmd.Wait() // after the last read: Wait closes the pipe
		p.mu.Lock()
		p.state, p.exitedAt = p.cmd.ProcessState, time.Now()
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("last log lines of %s:\n%s", p.name, p.tail(40))
		}
	})
	select {
	case a := <-addr:
		p.URL = "http://" + a
	case <-p.done:
		t.Fatalf("%s exited at start:\n%s", name, p.tail(40))
	case <-time.After(90 * time.Second):
		t.Fatalf("%s did not listen within 90s:\n%s", name, p.tail(40))
	}
	testenv.Eventually(t, 60*time.Second, func() bool { return testenv.Status(p.URL+"/readyz") == http.StatusOK },
		"%s not ready", name)
	return p
}

// signal sends sig and returns when the process exited, with how long that took (it fails t after timeout).
func (p *proc) signal(sig syscall.Signal, timeout time.Duration) time.Duration {
	p.t.Helper()
	sent := time.Now()
	require.NoError(p.t, p.cmd.Process.Signal(sig))
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s still running %s after %s:\n%s", p.name, timeout, sig, p.tail(40))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitedAt.Sub(sent)
}

// exitCode returns the process's exit code, -1 when a signal killed it.
func (p *proc) exitCode() int {
	<-p.done
	return p.state.ExitCode()
}

// logLines returns the log lines that contain s.
func (p *proc) logLines(s string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range strings.Split(p.logs.String(), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := strings.Split(strings.TrimRight(p.logs.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
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
