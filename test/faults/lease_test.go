package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/platform/cluster"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

// Membership settings of the lease tests: short, so that a cut-off replica's tenants move within seconds.
// REPLICA_TTL must cover CONSUMER_DRAIN_TIMEOUT and three heartbeat intervals.
const (
	leaseInterval  = 500 * time.Millisecond
	leaseTTL       = 3 * time.Second
	leaseReconcile = 2 * time.Second
	leaseDrain     = time.Second
	leaseGrace     = time.Second
)

func leaseEnv(replicaID string, extra ...string) []string {
	return append([]string{
		"REPLICA_ID=" + replicaID,
		"REPLICA_HEARTBEAT_INTERVAL=" + leaseInterval.String(),
		"REPLICA_TTL=" + leaseTTL.String(),
		"RECONCILE_INTERVAL=" + leaseReconcile.String(),
		"CONSUMER_DRAIN_TIMEOUT=" + leaseDrain.String(),
		"REPLICA_BROKER_GRACE=" + leaseGrace.String(),
	}, extra...)
}

// leasePair is two replicas, A (the one the test cuts off) and B, sharing tenants created through B.
type leasePair struct {
	t          *testing.T
	a, b       *testenv.Server
	aID, bID   string
	ofA, ofB   []string // tenants placed on A and on B while both are live
	all        []string
	dbURL      string // the test database, as its superuser
	amqpURL    string // the test virtual host, as the management user
	storedConn *pgx.Conn
}

// startLeasePair starts B, then A (so that B applies the migrations and owns the schema), each with what
// envs returns for the test's configuration added to its environment (its own credentials), and creates
// tenants through B until each replica owns at least two.
func startLeasePair(t *testing.T, name string, envs func(cfg config.Config) (envA, envB []string)) *leasePair {
	t.Helper()
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RabbitMQManagementURL = "" // orphan-queue cleanup is not under test
	p := &leasePair{t: t, aID: testenv.RandomName(name + "-a-"), bID: testenv.RandomName(name + "-b-"),
		dbURL: cfg.DatabaseURL, amqpURL: cfg.AMQPURL}
	envA, envB := envs(cfg)
	p.b = startProc(t, name+"-b", cfg, leaseEnv(p.bID, envB...)...)
	p.a = startProc(t, name+"-a", cfg, leaseEnv(p.aID, envA...)...)
	live := []string{p.aID, p.bID}
	for i := 0; len(p.ofA) < 2 || len(p.ofB) < 2; i++ {
		require.Less(t, i, 20, "rendezvous hashing put 20 tenants on one replica")
		id := createTenant(t, p.b.URL, fmt.Sprintf("%s-%d", name, i), 1)
		if cluster.Owner(live, uuid.MustParse(id)) == p.aID {
			p.ofA = append(p.ofA, id)
		} else {
			p.ofB = append(p.ofB, id)
		}
		p.all = append(p.all, id)
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		return metric(t, p.a.URL, "msgsvc_consumers_running") == float64(len(p.ofA)) &&
			metric(t, p.b.URL, "msgsvc_consumers_running") == float64(len(p.ofB))
	}, "the replicas do not consume the tenants placed on them")
	waitConsumers(t, p.amqpURL, p.all, 10*time.Second)
	conn, err := pgx.Connect(context.Background(), p.dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	p.storedConn = conn
	return p
}

// probe publishes one message through B into each tenant and returns their ids.
func (p *leasePair) probe(tenants []string) map[string]string {
	p.t.Helper()
	ids := map[string]string{}
	for _, tn := range tenants {
		status, raw, err := call(http.DefaultClient, http.MethodPost, p.b.URL+"/api/v1/messages",
			fmt.Appendf(nil, `{"tenant_id":%q,"payload":{"probe":true}}`, tn))
		require.NoError(p.t, err)
		require.Equal(p.t, http.StatusAccepted, status, string(raw))
		var acc struct {
			ID string `json:"id"`
		}
		require.NoError(p.t, json.Unmarshal(raw, &acc))
		ids[acc.ID] = tn
	}
	return ids
}

// awaitStored waits until every message of ids is stored, for at most timeout, and returns how long it took
// from since; it fails t with the tenants still waiting.
func (p *leasePair) awaitStored(ids map[string]string, since time.Time, timeout time.Duration) time.Duration {
	p.t.Helper()
	list := make([]uuid.UUID, 0, len(ids))
	for id := range ids {
		list = append(list, uuid.MustParse(id))
	}
	var stored []string
	for {
		rows, err := p.storedConn.Query(context.Background(), "SELECT id::text FROM messages WHERE id = ANY($1)", list)
		require.NoError(p.t, err)
		stored, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(p.t, err)
		if len(stored) == len(ids) {
			return time.Since(since)
		}
		if time.Since(since) > timeout {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var waiting []string
	for id, tn := range ids {
		if !contains(stored, id) {
			waiting = append(waiting, tn)
		}
	}
	p.t.Fatalf("after %s, %d of %d tenants have not stored the message published through the other replica: %v",
		timeout, len(waiting), len(ids), waiting)
	return 0
}

// withUser returns rawURL with user and password as its credentials.
func withUser(t *testing.T, rawURL, user, password string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	u.User = url.UserPassword(user, password)
	return u.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// awaitRejoin waits until A, its fault mended, heartbeats again and consumes the tenants placed on it, and B
// only its own, and returns how long that took.
func (p *leasePair) awaitRejoin() time.Duration {
	p.t.Helper()
	began := time.Now()
	testenv.Eventually(p.t, 30*time.Second, func() bool {
		return metric(p.t, p.a.URL, "msgsvc_replica_lease_held") == 1 &&
			metric(p.t, p.a.URL, "msgsvc_consumers_running") == float64(len(p.ofA)) &&
			metric(p.t, p.b.URL, "msgsvc_consumers_running") == float64(len(p.ofB))
	}, "replica A did not take its tenants back")
	return time.Since(began)
}

// finish stops the stream and checks that every message answered 202 (and each probe) is stored exactly once.
func (p *leasePair) finish(st *stream, probes map[string]string) outcome {
	p.t.Helper()
	st.halt()
	acc := accepted(p.t, st.snapshot())
	for id, tn := range probes {
		acc[id] = tn
	}
	o := settle(p.t, p.dbURL, p.amqpURL, p.all, acc, 60*time.Second)
	require.Zero(p.t, o.deadLettered)
	return o
}

// TestReplicaCutOffFromPostgresHandsItsTenantsOver runs two replicas and takes PostgreSQL away from replica A
// only (its role made NOLOGIN and its sessions ended; A keeps RabbitMQ). A's lease runs out, so it stops its
// consumers before B counts it dead; B takes A's tenants over: each of them stores a message published through
// B within REPLICA_TTL plus a reconciliation interval of the cut. Once A may log in again, it takes its tenants
// back, and every message answered 202 is stored exactly once. Before ownership was a lease, A went on consuming while storing nothing (0 of 9 tenants stored
// within 60 s).
func TestReplicaCutOffFromPostgresHandsItsTenantsOver(t *testing.T) {
	s := testenv.Get(t)
	admin, err := pgx.Connect(context.Background(), s.DatabaseURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	role := strings.ReplaceAll(testenv.RandomName("lease_a_"), "-", "_")
	password := testenv.RandomName("pw")
	_, err = admin.Exec(context.Background(), fmt.Sprintf(`CREATE ROLE %s LOGIN SUPERUSER PASSWORD '%s'`, role, password))
	require.NoError(t, err)
	// Runs after the processes were killed (cleanups run last first), before the database is dropped.
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+role); err != nil {
			t.Logf("drop role %s: %v", role, err)
		}
	})
	p := startLeasePair(t, "pgcut", func(cfg config.Config) ([]string, []string) {
		return []string{"DATABASE_URL=" + withUser(t, cfg.DatabaseURL, role, password)}, nil
	})
	st := startStream(t, p.b.URL, p.all, 2, 20*time.Millisecond)
	time.Sleep(time.Second)

	cut := time.Now()
	_, err = admin.Exec(context.Background(), "ALTER ROLE "+role+" NOLOGIN")
	require.NoError(t, err)
	_, err = admin.Exec(context.Background(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
	require.NoError(t, err)
	probes := p.probe(p.ofA)
	bound := leaseTTL + leaseReconcile
	took := p.awaitStored(probes, cut, bound)
	t.Logf("replica A cut off from PostgreSQL: all %d of its tenants stored a message published through B %s after the cut (bound %s)",
		len(p.ofA), took.Round(10*time.Millisecond), bound)
	require.Zero(t, metric(t, p.a.URL, "msgsvc_replica_lease_held"), "replica A says it holds its lease")
	require.Zero(t, metric(t, p.a.URL, "msgsvc_consumers_running"), "replica A still runs consumers without its lease")

	_, err = admin.Exec(context.Background(), "ALTER ROLE "+role+" LOGIN")
	require.NoError(t, err)
	back := p.awaitRejoin()
	o := p.finish(st, probes)
	t.Logf("A rejoined %s after its role could log in again; %s; answers %s", back.Round(10*time.Millisecond), o, statuses(st.snapshot()))
}

// TestReplicaCutOffFromRabbitMQHandsItsTenantsOver runs two replicas, each with a RabbitMQ user of its own, and
// takes RabbitMQ away from replica A only (its user's permissions cleared and its connections closed; A keeps
// PostgreSQL). After REPLICA_BROKER_GRACE without its consumer connections, A stops heartbeating and owns
// nothing; B takes A's tenants over: each of them stores a message published through B within the grace plus
// REPLICA_TTL plus a reconciliation interval of the cut. Once A's user is let in again, A heartbeats again and
// takes its tenants back, and every message answered 202 is stored exactly once.
// Before, A went on heartbeating and nobody consumed its tenants (0 of 13 stored within 60 s).
func TestReplicaCutOffFromRabbitMQHandsItsTenantsOver(t *testing.T) {
	s := testenv.Get(t)
	s.RunScript(t, "rabbitmqctl", "-q", "list_users") // skips without the local services script
	userA, userB := testenv.RandomName("lease-a-"), testenv.RandomName("lease-b-")
	password := testenv.RandomName("pw")
	var vhost string
	p := startLeasePair(t, "mqcut", func(cfg config.Config) ([]string, []string) {
		u, err := url.Parse(cfg.AMQPURL)
		require.NoError(t, err)
		vhost = strings.TrimPrefix(u.Path, "/")
		for _, user := range []string{userA, userB} {
			s.RunScript(t, "rabbitmqctl", "-q", "add_user", user, password)
			t.Cleanup(func() { _ = exec.Command(s.Script, "rabbitmqctl", "-q", "delete_user", user).Run() })
			s.RunScript(t, "rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
		}
		return []string{"AMQP_URL=" + withUser(t, cfg.AMQPURL, userA, password)},
			[]string{"AMQP_URL=" + withUser(t, cfg.AMQPURL, userB, password)}
	})
	st := startStream(t, p.b.URL, p.all, 2, 20*time.Millisecond)
	time.Sleep(time.Second)

	s.RunScript(t, "rabbitmqctl", "-q", "clear_permissions", "-p", vhost, userA) // A's open connections go on
	s.RunScript(t, "rabbitmqctl", "-q", "close_all_user_connections", userA, "lease test: replica A cut off")
	cut := time.Now() // A's connections are closed; reconnecting, it is refused
	probes := p.probe(p.ofA)
	bound := leaseGrace + leaseTTL + leaseReconcile
	took := p.awaitStored(probes, cut, bound)
	t.Logf("replica A cut off from RabbitMQ: all %d of its tenants stored a message published through B %s after the cut (bound %s)",
		len(p.ofA), took.Round(10*time.Millisecond), bound)
	require.Zero(t, metric(t, p.a.URL, "msgsvc_replica_lease_held"), "replica A says it holds its lease")
	require.Zero(t, metric(t, p.a.URL, "msgsvc_consumers_running"), "replica A still runs consumers without its lease")

	s.RunScript(t, "rabbitmqctl", "-q", "set_permissions", "-p", vhost, userA, ".*", ".*", ".*")
	back := p.awaitRejoin()
	o := p.finish(st, probes)
	t.Logf("A rejoined %s after its user was allowed in again; %s; answers %s", back.Round(10*time.Millisecond), o, statuses(st.snapshot()))
}

// TestStarvedPoolDoesNotExpireAHealthyReplica holds the only connection of the service's database pool
// (DB_MAX_OPEN_CONNS=1), as stores waiting on a lock would hold them all, for twice REPLICA_TTL. The heartbeat
// has a connection of its own: the replica's row stays younger than the TTL throughout and it keeps its lease,
// so the other replicas never take its tenants over while it is healthy.
func TestStarvedPoolDoesNotExpireAHealthyReplica(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.DBMaxOpenConns, cfg.DBMaxIdleConns = 1, 1
	cfg.ReplicaHeartbeatInterval, cfg.ReplicaTTL, cfg.ConsumerDrainTimeout = leaseInterval, leaseTTL, leaseDrain
	var db *bun.DB
	a := testenv.Start(t, cfg, fx.Populate(&db))
	ctx := context.Background()
	check, err := pgx.Connect(ctx, cfg.DatabaseURL)
	require.NoError(t, err)
	defer check.Close(ctx)
	age := func() time.Duration {
		var d time.Duration
		require.NoError(t, check.QueryRow(ctx, "SELECT now() - heartbeat_at FROM replicas WHERE id = $1", cfg.ReplicaID).Scan(&d))
		return d
	}
	require.Less(t, age(), leaseTTL)

	held, err := db.Conn(ctx)
	require.NoError(t, err)
	defer held.Close()
	var oldest time.Duration
	for end := time.Now().Add(2 * leaseTTL); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		oldest = max(oldest, age())
		require.Less(t, oldest, leaseTTL, "the heartbeat waited for the starved pool: the others count this replica dead")
		require.Equal(t, 1.0, metric(t, a.URL, "msgsvc_replica_lease_held"), "the replica gave its lease up")
	}
	t.Logf("pool starved for %s: the oldest heartbeat seen was %s old (TTL %s)", 2*leaseTTL, oldest.Round(time.Millisecond), leaseTTL)
}
