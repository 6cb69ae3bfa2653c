package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ServerPackage is the import path of the service's main package.
const ServerPackage = "github.com/acme/msgsvc/cmd/server"

var (
	buildMu sync.Mutex
	builds  = map[string]*serverBuild{}
)

type serverBuild struct {
	once sync.Once
	err  error
}

// BuildServer builds the main package pkg (ServerPackage, or a variant such as one that adds net/http/pprof)
// into the file out with `go build`, run in dir ("" for the current directory). It builds once per process for
// each out: later calls wait for the first and return its result.
func BuildServer(ctx context.Context, dir, pkg, out string) error {
	buildMu.Lock()
	b, ok := builds[out]
	if !ok {
		b = &serverBuild{}
		builds[out] = b
	}
	buildMu.Unlock()
	b.once.Do(func() {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = dir
		if raw, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %w\n%s", pkg, err, raw)
		}
	})
	return b.err
}

// ServerOptions say how to run the service binary.
type ServerOptions struct {
	Name   string // names the process in errors and in the log file
	Binary string // the executable, built by BuildServer
	// Env is the service's configuration as NAME=value. PATH and HOME are passed on; HTTP_ADDR is set to a free
	// port of 127.0.0.1 (Server.URL).
	Env     []string
	Dir     string // working directory; "" for the current one
	LogFile string // when set, the output is appended to this file as well, after a "---- <name> start" line
}

// Server is the service binary running as a separate OS process. Its output (stdout and stderr) is kept in
// memory for LogLines and Tail. It runs in its own process group (a Ctrl-C reaches the caller only, which
// stops it), and on Linux the kernel sends it SIGTERM should the caller die without stopping it.
type Server struct {
	URL  string // http://127.0.0.1:port
	Name string

	cmd     *exec.Cmd
	started time.Time
	out     *output

	done     chan struct{} // closed when the process exited
	exitedAt time.Time
	waitErr  error
}

// SpawnServer starts the process and returns at once; WaitReady waits for it to be ready.
func SpawnServer(o ServerOptions) (*Server, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	out := &output{}
	if o.LogFile != "" {
		if out.file, err = os.OpenFile(o.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			return nil, err
		}
		fmt.Fprintf(out.file, "---- %s start %s\n", o.Name, time.Now().Format(time.RFC3339))
	}
	cmd := exec.Command(o.Binary)
	cmd.Dir = o.Dir
	cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, o.Env...),
		fmt.Sprintf("HTTP_ADDR=127.0.0.1:%d", port))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = serverProcAttr()
	s := &Server{URL: fmt.Sprintf("http://127.0.0.1:%d", port), Name: o.Name, cmd: cmd, out: out, done: make(chan struct{})}
	s.started = time.Now()
	if err := cmd.Start(); err != nil {
		out.close()
		return nil, fmt.Errorf("start %s: %w", o.Name, err)
	}
	go func() {
		err := cmd.Wait() // returns once the output is copied
		s.exitedAt, s.waitErr = time.Now(), err
		out.close()
		close(s.done)
	}()
	return s, nil
}

// StartServer starts the process and waits until /readyz answers 200, at most timeout; when it does not, it
// stops the process and returns an error with its last log lines.
func StartServer(ctx context.Context, o ServerOptions, timeout time.Duration) (*Server, error) {
	s, err := SpawnServer(o)
	if err != nil {
		return nil, err
	}
	if err := s.WaitReady(ctx, timeout); err != nil {
		_, _ = s.Stop(time.Minute)
		return nil, err
	}
	return s, nil
}

// RunServer starts the process for t and waits until it is ready (90 s at most), or fails t. When t ends the
// process is killed if it still runs, and when t failed its last log lines are logged.
func RunServer(t testing.TB, o ServerOptions) *Server {
	t.Helper()
	s, err := StartServer(context.Background(), o, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("last log lines of %s:\n%s", s.Name, s.Tail(40))
			if path, err := s.keepLog(t.Name()); err != nil {
				t.Logf("could not keep the whole log of %s: %v", s.Name, err)
			} else if path != "" {
				t.Logf("the whole log of %s: %s", s.Name, path)
			}
		}
	})
	return s
}

// keepLog writes the process's whole output (what memory kept of it) to a file named after test in the folder
// TEST_SERVER_LOGS names (`go tool task test` sets test/output/servers), and returns its path; without that
// variable it writes nothing. A failure that shows only on some runs is read from there.
func (s *Server) keepLog(test string) (string, error) {
	dir := os.Getenv("TEST_SERVER_LOGS")
	if dir == "" {
		return "", nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(test + "-" + s.Name + ".log")
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, []byte(strings.Join(s.out.lines(), "\n")+"\n"), 0o644)
}

// FreePort returns a TCP port of 127.0.0.1 that nothing listened on a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// PID returns the process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Started returns when the process was started.
func (s *Server) Started() time.Time { return s.started }

// Alive reports whether the process still runs.
func (s *Server) Alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Exited says how the process ended, with its last log lines; call it once Alive is false.
func (s *Server) Exited() error {
	<-s.done
	return fmt.Errorf("%s exited (%v); last log lines:\n%s", s.Name, s.waitErr, s.Tail(15))
}

// WaitReady polls /readyz until it answers 200, and fails when the process exits, ctx ends or timeout passes.
func (s *Server) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 2 * time.Second}
	defer c.CloseIdleConnections()
	for {
		if !s.Alive() {
			return s.Exited()
		}
		resp, err := c.Get(s.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s; last log lines:\n%s", s.Name, timeout, s.Tail(15))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Signal sends sig and waits for the process to exit, at most timeout; it returns how long the exit took.
// A process still running after timeout is killed, and the error says so.
func (s *Server) Signal(sig syscall.Signal, timeout time.Duration) (time.Duration, error) {
	sent := time.Now()
	if err := s.cmd.Process.Signal(sig); err != nil {
		return 0, fmt.Errorf("%s: %s: %w", s.Name, sig, err)
	}
	select {
	case <-s.done:
		return s.exitedAt.Sub(sent), nil
	case <-time.After(timeout):
		s.Kill()
		return time.Since(sent), fmt.Errorf("%s still running %s after %s; killed. Last log lines:\n%s", s.Name, timeout, sig, s.Tail(40))
	}
}

// Stop sends SIGTERM and waits for the exit (killing the process after timeout), and returns how long the
// shutdown took. Exiting with a status other than 0 is an error too; a process that already exited is not.
func (s *Server) Stop(timeout time.Duration) (time.Duration, error) {
	if !s.Alive() {
		return 0, nil
	}
	d, err := s.Signal(syscall.SIGTERM, timeout)
	if err != nil {
		return d, err
	}
	if code := s.ExitCode(); code != 0 {
		return d, fmt.Errorf("%s exited with status %d after SIGTERM (%v)", s.Name, code, s.waitErr)
	}
	return d, nil
}

// Kill kills the process, if it still runs, and waits for its end.
func (s *Server) Kill() {
	if s.Alive() {
		_ = s.cmd.Process.Kill()
	}
	<-s.done
}

// ExitCode waits for the process's end and returns its exit code, -1 when a signal ended it.
func (s *Server) ExitCode() int {
	<-s.done
	return s.cmd.ProcessState.ExitCode()
}

// LogLines returns the lines of output that contain substr.
func (s *Server) LogLines(substr string) []string {
	var lines []string
	for _, l := range s.out.lines() {
		if strings.Contains(l, substr) {
			lines = append(lines, l)
		}
	}
	return lines
}

// Tail returns the last n lines of output.
func (s *Server) Tail(n int) string {
	lines := s.out.lines()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// maxOutput bounds the output kept in memory: beyond it the older half is dropped.
const maxOutput = 32 << 20

// output keeps a process's output in memory and appends it to a file when one is open.
type output struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	file  *os.File
	limit int // the bound of buf; 0 is maxOutput
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	limit := o.limit
	if limit == 0 {
		limit = maxOutput
	}
	if o.buf.Len()+len(p) > limit {
		keep := o.buf.Bytes()[o.buf.Len()/2:]
		if i := bytes.IndexByte(keep, '\n'); i >= 0 {
			keep = keep[i+1:]
		}
		o.buf = *bytes.NewBuffer(append([]byte(nil), keep...))
	}
	o.buf.Write(p)
	if o.file != nil {
		if _, err := o.file.Write(p); err != nil {
			_ = o.file.Close()
			o.file = nil // the memory copy goes on
		}
	}
	return len(p), nil
}

func (o *output) lines() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := strings.TrimRight(o.buf.String(), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func (o *output) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file != nil {
		_ = o.file.Close()
		o.file = nil
	}
}
