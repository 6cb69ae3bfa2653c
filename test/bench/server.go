package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/acme/msgsvc/test/testenv"
)

// buildServer builds the real server binary, as a deployment would run it.
func (r *runner) buildServer(ctx context.Context) error {
	r.binary = filepath.Join(r.root, ".dev", "bench", "server")
	return testenv.BuildServer(ctx, r.root, r.opt.serverPkg, r.binary)
}

// server is the service running as a separate process.
type server struct {
	*testenv.Server
	PprofURL string // the service's PPROF_ADDR, when -cpuprofile
}

// startServer starts the service against env with configuration from environment variables only, and waits
// for /readyz.
func (r *runner) startServer(ctx context.Context, e *benchEnv, name string) (*server, error) {
	s, err := r.spawnServer(e, name)
	if err != nil {
		return nil, err
	}
	if err := s.WaitReady(ctx, 90*time.Second); err != nil {
		_, _ = s.Stop(time.Minute)
		return nil, err
	}
	return s, nil
}

// spawnServer starts the process and returns at once.
func (r *runner) spawnServer(e *benchEnv, name string) (*server, error) {
	env := []string{
		"DATABASE_URL=" + e.DatabaseURL,
		"AMQP_URL=" + e.AMQPURL,
		"RABBITMQ_MANAGEMENT_URL=" + r.svc.ManagementURL,
		"LOG_LEVEL=warn",
		// The harness calls every endpoint with this admin key (Authorization: Bearer).
		"ADMIN_API_KEYS=" + r.adminKey,
		"REPLICA_ID=bench-" + name,
	}
	// The Go runtime's own knobs pass through, so that their effect can be measured.
	for _, k := range []string{"GOGC", "GOMEMLIMIT", "GOMAXPROCS", "GODEBUG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	var pprofURL string
	if r.opt.cpuprofile {
		pp, err := testenv.FreePort()
		if err != nil {
			return nil, err
		}
		env = append(env, fmt.Sprintf("PPROF_ADDR=127.0.0.1:%d", pp))
		pprofURL = fmt.Sprintf("http://127.0.0.1:%d", pp)
	}
	env = append(env, r.opt.serverEnv...)
	ts, err := testenv.SpawnServer(testenv.ServerOptions{Name: "server " + name, Binary: r.binary, Env: env, Dir: r.root,
		LogFile: filepath.Join(r.root, ".dev", "bench", "server-"+name+".log")})
	if err != nil {
		return nil, err
	}
	s := &server{Server: ts, PprofURL: pprofURL}
	r.servers = append(r.servers, s)
	return s, nil
}

// metrics scrapes /metrics and sums every series of each metric over its labels.
func (s *server) metrics(ctx context.Context, c *http.Client) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: HTTP %d", resp.StatusCode)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(rd io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		var name, rest string
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			name, rest = line[:i], line[j+1:]
		} else {
			name, rest, _ = strings.Cut(line, " ")
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[name] += v
	}
	return m, sc.Err()
}
