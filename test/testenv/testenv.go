// Package testenv gives integration tests real PostgreSQL and RabbitMQ servers and starts the whole
// application against them.
//
// Servers come from TEST_DATABASE_URL, TEST_AMQP_URL and TEST_RABBITMQ_MANAGEMENT_URL when set (this is what
// `go tool task test` does, after starting throwaway local servers), else from testcontainers where a Docker
// engine answers (always with TEST_CONTAINERS=1; TEST_POSTGRES_IMAGE and TEST_RABBITMQ_IMAGE choose the images,
// as `go tool task test:containers` does). With TEST_REQUIRE_SERVICES=1 a test fails instead of skipping when neither is available.
// Every test gets its own database and its own RabbitMQ virtual host, so tests never see each other's data.
package testenv

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcrabbit "github.com/testcontainers/testcontainers-go/modules/rabbitmq"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/test/testdb"
)

// Servers are the database and broker servers shared by a test binary.
type Servers struct {
	DatabaseURL   string // a superuser connection to an administrative database
	AMQPURL       string // the default virtual host
	ManagementURL string // RabbitMQ management API base URL with credentials
	// Script is deployments/local/services.sh when the servers are local processes; it can stop and start them.
	Script string
	// rabbitmqctl runs rabbitmqctl inside the RabbitMQ container when the servers are containers.
	rabbitmqctl func(ctx context.Context, args ...string) ([]byte, error)
}

var (
	once    sync.Once
	servers *Servers
	initErr error
)

// Get returns the shared servers, or skips (fails, with TEST_REQUIRE_SERVICES=1) the test when none exist.
func Get(t testing.TB) *Servers {
	t.Helper()
	once.Do(func() { servers, initErr = find() })
	if initErr != nil {
		if os.Getenv("TEST_REQUIRE_SERVICES") == "1" {
			t.Fatalf("integration servers required but unavailable: %v", initErr)
		}
		t.Skipf("integration servers unavailable (set TEST_DATABASE_URL and TEST_AMQP_URL, or run `go tool task test`): %v", initErr)
	}
	return servers
}

func find() (*Servers, error) {
	s := &Servers{
		DatabaseURL:   os.Getenv("TEST_DATABASE_URL"),
		AMQPURL:       os.Getenv("TEST_AMQP_URL"),
		ManagementURL: os.Getenv("TEST_RABBITMQ_MANAGEMENT_URL"),
		Script:        os.Getenv("TEST_SERVICES_SCRIPT"),
	}
	if os.Getenv("TEST_CONTAINERS") == "1" {
		return fromContainers()
	}
	if s.DatabaseURL != "" && s.AMQPURL != "" {
		if s.ManagementURL == "" {
			return nil, fmt.Errorf("TEST_RABBITMQ_MANAGEMENT_URL is required with TEST_AMQP_URL")
		}
		return s, nil
	}
	return fromContainers()
}

// Images of the testcontainers path: the official ones unless TEST_POSTGRES_IMAGE or TEST_RABBITMQ_IMAGE name
// others (`go tool task test:containers` passes the images:local ones, built from Debian packages).
const (
	defaultPostgresImage = "postgres:15-alpine"
	defaultRabbitMQImage = "rabbitmq:4.1-management-alpine"
	// ContainerLabel marks every container this package starts, so that a task can remove them when Ryuk,
	// testcontainers' reaper, is disabled (TESTCONTAINERS_RYUK_DISABLED=true; its image needs a registry).
	ContainerLabel = "org.acme.msgsvc.testenv"
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// fromContainers starts PostgreSQL and RabbitMQ with testcontainers-go. Each wait is bounded, so a missing
// image or a server that never comes up fails within minutes, naming which.
func fromContainers() (*Servers, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return nil, fmt.Errorf("no TEST_DATABASE_URL/TEST_AMQP_URL and no Docker: %w", err)
	}
	defer provider.Close()
	if err := provider.Health(ctx); err != nil {
		return nil, fmt.Errorf("no TEST_DATABASE_URL/TEST_AMQP_URL and no Docker daemon answers: %w", err)
	}
	label := testcontainers.WithLabels(map[string]string{ContainerLabel: "1"})

	pgImage := envOr("TEST_POSTGRES_IMAGE", defaultPostgresImage)
	pg, err := tcpostgres.Run(ctx, pgImage, tcpostgres.WithDatabase("msgsvc"),
		tcpostgres.WithUsername("msgsvc"), tcpostgres.WithPassword("msgsvc"), label,
		testcontainers.WithWaitStrategy(
			wait.ForLog("database system is ready to accept connections").WithOccurrence(2).WithStartupTimeout(2*time.Minute),
			wait.ForListeningPort("5432/tcp").WithStartupTimeout(time.Minute)))
	if err != nil {
		return nil, fmt.Errorf("postgres container (%s): %w", pgImage, err)
	}
	dsn, err := pg.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return nil, err
	}

	rbImage := envOr("TEST_RABBITMQ_IMAGE", defaultRabbitMQImage)
	rb, err := tcrabbit.Run(ctx, rbImage, label,
		testcontainers.WithWaitStrategy(
			wait.ForLog(".*Server startup complete.*").AsRegexp().WithStartupTimeout(3*time.Minute),
			wait.ForListeningPort("15672/tcp").WithStartupTimeout(time.Minute)))
	if err != nil {
		return nil, fmt.Errorf("rabbitmq container (%s): %w", rbImage, err)
	}
	amqpURL, err := rb.AmqpURL(ctx)
	if err != nil {
		return nil, err
	}
	httpURL, err := rb.HttpURL(ctx)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(httpURL)
	u.User = url.UserPassword(rb.AdminUsername, rb.AdminPassword)
	ctl := func(ctx context.Context, args ...string) ([]byte, error) {
		code, r, err := rb.Exec(ctx, append([]string{"rabbitmqctl"}, args...), tcexec.Multiplexed())
		if err != nil {
			return nil, err
		}
		out, _ := io.ReadAll(r)
		if code != 0 {
			return out, fmt.Errorf("rabbitmqctl exited with %d", code)
		}
		return out, nil
	}
	return &Servers{DatabaseURL: dsn, AMQPURL: amqpURL, ManagementURL: u.String(), rabbitmqctl: ctl}, nil
}

// RandomName returns prefix followed by 12 random hex digits (testdb.RandomName).
func RandomName(prefix string) string { return testdb.RandomName(prefix) }

// NewDatabase creates an empty database for t and drops it when t ends; it returns its URL.
func (s *Servers) NewDatabase(t testing.TB) string {
	t.Helper()
	_, dbURL := testdb.Create(t, s.DatabaseURL, "t_")
	return dbURL
}

// NewVHost creates a RabbitMQ virtual host for t, open to the management user, and deletes it when t ends.
// It returns the AMQP URL of the virtual host.
func (s *Servers) NewVHost(t testing.TB) string {
	t.Helper()
	m := s.Management(t)
	name := RandomName("t_")
	ctx, cancel := context.WithTimeout(context.Background(), managementTimeout)
	defer cancel()
	if err := m.CreateVHost(ctx, name); err != nil {
		t.Fatalf("create virtual host: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), managementTimeout)
		defer cancel()
		_ = m.DeleteVHost(ctx, name)
	})
	if err := m.SetPermissions(ctx, name, m.User(), broker.FullPermissions); err != nil {
		t.Fatalf("open virtual host %s to %s: %v", name, m.User(), err)
	}
	u, _ := url.Parse(s.AMQPURL)
	u.Path = "/" + name
	return u.String()
}

// managementTimeout bounds a management API call of the tests: deleting a virtual host with thousands of
// queues takes minutes.
const managementTimeout = 5 * time.Minute

// managementClient serves the tests' management API calls; its transport is http.DefaultTransport.
var managementClient = &http.Client{Timeout: managementTimeout}

// Management returns a client of the servers' RabbitMQ management API, or fails t when its URL is unusable.
func (s *Servers) Management(t testing.TB) *broker.Management {
	t.Helper()
	m, err := broker.NewManagement(s.ManagementURL, managementClient)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// RunScript runs the local services script with args (for example rabbitmq-stop-app); it fails t when the
// servers are not local processes, except for `rabbitmqctl ...`, which runs in the RabbitMQ container then.
func (s *Servers) RunScript(t testing.TB, args ...string) {
	t.Helper()
	if s.Script == "" && s.rabbitmqctl != nil && len(args) > 0 && args[0] == "rabbitmqctl" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := s.rabbitmqctl(ctx, args[1:]...); err != nil {
			t.Fatalf("rabbitmqctl %v in the RabbitMQ container: %v\n%s", args[1:], err, out)
		}
		return
	}
	if s.Script == "" {
		if os.Getenv("TEST_REQUIRE_SERVICES") == "1" {
			t.Fatalf("TEST_SERVICES_SCRIPT is not set; cannot run %v", args)
		}
		t.Skipf("servers are not local processes; cannot run %v", args)
	}
	out, err := exec.Command(s.Script, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", s.Script, args, err, out)
	}
}

// SuspendQueue stops the Erlang process of the classic queue named queue in amqpURL's virtual host
// (sys:suspend) until resume is called, or t ends: the node and every other queue go on, but anything that needs
// the queue's answer (a declare, a passive declare, a consume, a cancel, a delete, a publish's confirm) waits, as
// when the queue's process is busy for minutes (a long backlog paged from disk) or its node is frozen while the
// node the client talks to is not. A quorum queue answers a passive declare from its member's state, so this is
// a classic queue's failure. It runs `rabbitmqctl eval` (RunScript).
func (s *Servers) SuspendQueue(t testing.TB, amqpURL, queue string) (resume func()) {
	t.Helper()
	pid := fmt.Sprintf(`begin {ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<%q>>, queue, <<%q>>)), amqqueue:get_pid(Q) end`,
		vhostOf(t, amqpURL), queue)
	return s.suspend(t, pid)
}

// SuspendQueueCreation stops the supervisor that starts the classic queues of amqpURL's virtual host (sys:suspend)
// until resume is called, or t ends: every queue that exists goes on (publishes, consumes, confirms), but the
// declare of a new classic queue waits, as when the broker's node is overloaded or partly frozen. It runs
// `rabbitmqctl eval` (RunScript).
func (s *Servers) SuspendQueueCreation(t testing.TB, amqpURL string) (resume func()) {
	t.Helper()
	return s.suspend(t, fmt.Sprintf(`begin {ok, Sup} = rabbit_amqqueue_sup_sup:find_for_vhost(<<%q>>), Sup end`, vhostOf(t, amqpURL)))
}

// suspend suspends the Erlang process that pid (an expression) names until resume is called, or t ends.
func (s *Servers) suspend(t testing.TB, pid string) (resume func()) {
	t.Helper()
	s.RunScript(t, "rabbitmqctl", "eval", "sys:suspend("+pid+").")
	done := false
	resume = func() {
		if !done {
			done = true
			s.RunScript(t, "rabbitmqctl", "eval", "sys:resume("+pid+").")
		}
	}
	t.Cleanup(resume)
	return resume
}

// vhostOf returns the virtual host of amqpURL ("/" when it names none).
func vhostOf(t testing.TB, amqpURL string) string {
	t.Helper()
	u, err := url.Parse(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	vhost, err := url.PathUnescape(strings.TrimPrefix(u.EscapedPath(), "/"))
	if err != nil {
		t.Fatal(err)
	}
	if vhost == "" {
		vhost = "/"
	}
	return vhost
}
