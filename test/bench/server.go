package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// buildServer builds the real server binary, as a deployment would run it.
func (r *runner) buildServer(ctx context.Context) error {
	r.binary = filepath.Join(r.root, ".dev", "bench", "server")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", r.binary, r.opt.serverPkg)
	cmd.Dir = r.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s: %w\n%s", r.opt.serverPkg, err, out)
	}
	return nil
}

// server is the service running as a separate process.
type server struct {
	URL      string
	PprofURL string // the service's PPROF_ADDR, when -cpuprofile
	cmd      *exec.Cmd
	logPath  string
	exited   chan struct{}
	waitErr  error
	started  time.Time
}

func (s *server) PID() int { return s.cmd.Process.Pid }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startServer starts the service against env with configuration from environment variables only, and waits
// for /readyz.
func (r *runner) startServer(ctx context.Context, e *benchEnv, name string) (*server, error) {
	s, err := r.spawnServer(e, name)
	if err != nil {
		return nil, err
	}
	if err := s.waitReady(ctx, 90*time.Second); err != nil {
		_, _ = s.stop()
		return nil, err
	}
	return s, nil
}

// spawnServer starts the process and returns at once.
func (r *runner) spawnServer(e *benchEnv, name string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"DATABASE_URL=" + e.DatabaseURL,
		"AMQP_URL=" + e.AMQPURL,
		"RABBITMQ_MANAGEMENT_URL=" + r.svc.ManagementURL,
		fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port),
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
		pp, err := freePort()
		if err != nil {
			return nil, err
		}
		env = append(env, fmt.Sprintf("PPROF_ADDR=127.0.0.1:%d", pp))
		pprofURL = fmt.Sprintf("http://127.0.0.1:%d", pp)
	}
	env = append(env, r.opt.serverEnv...)
	logPath := filepath.Join(r.root, ".dev", "bench", "server-"+name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "---- %s start\n", time.Now().Format(time.RFC3339))
	cmd := exec.Command(r.binary)
	cmd.Dir = r.root
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group (a Ctrl-C reaches the harness, which stops the server itself), and the kernel ends the
	// server should the harness die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	s := &server{URL: fmt.Sprintf("http://127.0.0.1:%d", port), PprofURL: pprofURL, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	s.started = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() {
		s.waitErr = cmd.Wait()
		logf.Close()
		close(s.exited)
	}()
	r.servers = append(r.servers, s)
	return s, nil
}

func (s *server) alive() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

func (s *server) deadErr() error {
	return fmt.Errorf("server exited (%v); last lines of %s:\n%s", s.waitErr, s.logPath, tail(s.logPath, 15))
}

func (s *server) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 2 * time.Second}
	for {
		if !s.alive() {
			return s.deadErr()
		}
		resp, err := c.Get(s.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready within %s; last lines of %s:\n%s", timeout, s.logPath, tail(s.logPath, 15))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM, waits for the exit (SIGKILL after a minute) and returns how long the shutdown took.
func (s *server) stop() (time.Duration, error) {
	if !s.alive() {
		return 0, nil
	}
	t0 := time.Now()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return time.Since(t0), errors.New("server did not stop within 60s of SIGTERM; killed")
	}
	d := time.Since(t0)
	var ee *exec.ExitError
	if s.waitErr != nil && !(errors.As(s.waitErr, &ee) && ee.ExitCode() == 0) {
		return d, fmt.Errorf("server exit: %v", s.waitErr)
	}
	return d, nil
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

func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(raw, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
