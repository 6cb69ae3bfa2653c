package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"testing"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acme/msgsvc/cmd/server/app"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/httpserver"
)

// Config returns a configuration for t with its own database and virtual host, an ephemeral HTTP port and
// short intervals.
func (s *Servers) Config(t testing.TB) config.Config {
	t.Helper()
	c, err := config.LoadFrom(func(k string) string {
		if k == "ADMIN_API_KEYS" {
			return AdminKey
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	c.HTTPAddr = "127.0.0.1:0"
	c.DatabaseURL = s.NewDatabase(t)
	c.AMQPURL = s.NewVHost(t)
	c.RabbitMQManagementURL = s.ManagementURL
	c.LogLevel = "info"
	c.ReplicaID = RandomName("replica-")
	c.ReconcileInterval = 2 * time.Second
	c.ViewRefreshInterval = time.Second
	c.AMQPReconnectInterval = 200 * time.Millisecond
	c.ShutdownTimeout = 20 * time.Second
	c.ConsumerDrainTimeout = 5 * time.Second
	// TEST_AMQP_QUEUE_TYPE runs the tests on the other queue type (quorum by default, as the service).
	if qt := os.Getenv("TEST_AMQP_QUEUE_TYPE"); qt != "" {
		c.AMQPQueueType = qt
	}
	return c
}

// AdminKey is the admin API key of every test application; App.Do sends it unless told otherwise.
const AdminKey = "test-admin-key-0123456789"

// App is a running application.
type App struct {
	URL    string // http://127.0.0.1:port
	Config config.Config
	Logs   *observer.ObservedLogs
	fx     *fx.App
	t      testing.TB
	done   bool
}

// Start starts the whole application with cfg and stops it when t ends.
func Start(t testing.TB, cfg config.Config, extra ...fx.Option) *App {
	t.Helper()
	a, err := TryStart(t, cfg, extra...)
	if err != nil {
		t.Fatalf("start application: %v", err)
	}
	return a
}

// TryStart is Start that returns the start error instead of failing t.
func TryStart(t testing.TB, cfg config.Config, extra ...fx.Option) (*App, error) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	var srv *httpserver.Server
	a := &App{Config: cfg, Logs: logs, t: t}
	opts := append([]fx.Option{
		fx.Populate(&srv),
		fx.Decorate(func(l *zap.Logger) *zap.Logger {
			return zap.New(zapcoreTee(l, core)).With(zap.String("replica", cfg.ReplicaID))
		}),
	}, extra...)
	a.fx = fx.New(app.Options(cfg, opts...))
	if err := a.fx.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.fx.Start(ctx); err != nil {
		return nil, err
	}
	a.URL = fmt.Sprintf("http://%s", srv.Addr())
	t.Cleanup(func() {
		_ = a.Stop()
		a.checkNoKeyMaterialLogged()
		a.logWarningsIfFailed()
	})
	return a, nil
}

// Stop stops the application (once) and returns the stop error.
func (a *App) Stop() error {
	if a.done {
		return nil
	}
	a.done = true
	ctx, cancel := context.WithTimeout(context.Background(), a.Config.ShutdownTimeout)
	defer cancel()
	return a.fx.Stop(ctx)
}

// Eventually polls cond every 50 ms until it is true or timeout passes, then fails t with msg.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Status returns the status code of GET url.
func Status(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Wait polls cond every 50 ms until it is true (it returns true) or timeout passes (false).
func Wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// keyMaterial matches a tenant API key (msk_<id>_<secret>) or the admin key.
var keyMaterial = regexp.MustCompile(`msk_[A-Za-z0-9_-]{12}_[A-Za-z0-9_-]{20,}|` + regexp.QuoteMeta(AdminKey))

// checkNoKeyMaterialLogged fails the test when any log line of the application, at any level, holds a key.
func (a *App) checkNoKeyMaterialLogged() {
	for _, e := range a.Logs.All() {
		if line := fmt.Sprint(e.Message, " ", e.ContextMap()); keyMaterial.MatchString(line) {
			a.t.Errorf("API key material in a log line: %s", keyMaterial.ReplaceAllString(line, "<key>"))
		}
	}
}

// failedLogLines is how many of an application's warnings and errors a failed test prints, and
// failedRecentLines how many of its last lines at info level and above.
const (
	failedLogLines    = 40
	failedRecentLines = 30
)

// logWarningsIfFailed prints the application's last warnings and errors, then its last lines at info level and
// above (what started and stopped, and when), into a failed test's output: CI keeps only the failures' summary
// (test/failures.sh), which leaves the service's JSON log lines out, and a failure that shows only on some runs is
// read from there.
func (a *App) logWarningsIfFailed() {
	if !a.t.Failed() {
		return
	}
	var warnings, recent []string
	for _, e := range a.Logs.All() {
		if e.Level < zap.InfoLevel {
			continue
		}
		line := fmt.Sprintf("%s %s %s %v", e.Time.Format("15:04:05.000"), e.Level.CapitalString(), e.Message, e.ContextMap())
		line = keyMaterial.ReplaceAllString(line, "<key>")
		recent = append(recent, line)
		if e.Level >= zap.WarnLevel {
			warnings = append(warnings, line)
		}
	}
	a.printLast(warnings, failedLogLines, "warnings and errors")
	a.printLast(recent, failedRecentLines, "lines at info level and above")
}

// printLast prints the last n of lines under a heading naming what they are.
func (a *App) printLast(lines []string, n int, what string) {
	if len(lines) > n {
		a.t.Logf("replica %s: %d %s, the last %d:", a.Config.ReplicaID, len(lines), what, n)
		lines = lines[len(lines)-n:]
	} else {
		a.t.Logf("replica %s: %d %s", a.Config.ReplicaID, len(lines), what)
	}
	for _, l := range lines {
		a.t.Logf("  %s", l)
	}
}
