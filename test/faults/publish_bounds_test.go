package faults

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// boundedAnswer is what one client of the publish-bounds tests saw.
type boundedAnswer struct {
	group    string
	status   int // 0: the client gave up (its timeout) before an answer
	body     string
	retry    string // Retry-After
	id       string // the message id of a 202
	start    time.Time
	duration time.Duration
}

// publishWithin publishes {"g":group,"n":n} to tenant at baseURL and gives up after timeout, as an impatient
// client does.
func publishWithin(baseURL, tenant, group string, n int, timeout time.Duration) boundedAnswer {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	a := boundedAnswer{group: group}
	body := fmt.Appendf(nil, `{"tenant_id":%q,"payload":{"g":%q,"n":%d}}`, tenant, group, n)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/api/v1/messages", bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+testenv.AdminKey)
	a.start = time.Now()
	resp, err := boundsClient.Do(req)
	a.duration = time.Since(a.start)
	if err != nil {
		return a
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a.status, a.body, a.retry = resp.StatusCode, string(raw), resp.Header.Get("Retry-After")
	if a.status == http.StatusAccepted {
		var ok bool
		if _, rest, found := strings.Cut(a.body, `"id":"`); found {
			a.id, _, ok = strings.Cut(rest, `"`)
		}
		if !ok {
			a.id = ""
		}
	}
	return a
}

// boundsClient keeps a connection per client, so that hundreds of clients start at once.
var boundsClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 0}}

// storedGroups counts the tenant's stored messages by the payload's group.
func storedGroups(t *testing.T, conn *pgx.Conn, tenant string) map[string]int {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT payload->>'g', count(DISTINCT id) FROM messages WHERE tenant_id = $1 GROUP BY 1", tenant)
	require.NoError(t, err)
	out := map[string]int{}
	for rows.Next() {
		var g string
		var n int
		require.NoError(t, rows.Scan(&g, &n))
		out[g] = n
	}
	require.NoError(t, rows.Err())
	return out
}

// freezeRabbitMQ stops the local RabbitMQ node's Erlang VM (SIGSTOP): connections stay open, nothing is read,
// nothing confirmed. The returned function (also run when t ends) lets it run again.
func freezeRabbitMQ(t *testing.T, s *testenv.Servers) (thaw func()) {
	t.Helper()
	if s.Script == "" {
		if os.Getenv("TEST_REQUIRE_SERVICES") == "1" {
			t.Fatal("TEST_SERVICES_SCRIPT is not set; cannot freeze RabbitMQ")
		}
		t.Skip("servers are not local processes; cannot freeze RabbitMQ")
	}
	// deployments/local/services.sh keeps the beam pid in <checkout>/.dev/rabbitmq/rabbit.pid (RMQ_PID_FILE).
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(s.Script), "..", "..", ".dev", "rabbitmq", "rabbit.pid"))
	require.NoError(t, err, "RabbitMQ's pid file")
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	var once sync.Once
	thaw = func() { once.Do(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(thaw)
	// kill only queues the signal: a thread in a system call that cannot be interrupted (an fdatasync) stops when
	// it returns. The node is frozen once the kernel reports every one of its threads stopped.
	var running []string
	if !testenv.Wait(5*time.Second, func() bool { running = runningThreads(pid); return len(running) == 0 }) {
		t.Fatalf("RabbitMQ (pid %d) still has threads running 5 s after SIGSTOP: %v", pid, running)
	}
	return thaw
}

// runningThreads returns the threads of process pid that are not stopped, each as "tid:state" (from
// /proc/PID/task/TID/stat).
func runningThreads(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return []string{err.Error()}
	}
	var running []string
	for _, task := range tasks {
		raw, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if err != nil {
			continue // the thread ended
		}
		// The state follows the command name, which is in parentheses and may itself hold spaces.
		i := bytes.LastIndexByte(raw, ')')
		if i < 0 || i+2 >= len(raw) {
			continue
		}
		if st := raw[i+2]; st != 'T' && st != 't' {
			running = append(running, task.Name()+":"+string(st))
		}
	}
	return running
}

// TestPublishBoundsWhileRabbitMQFrozen freezes RabbitMQ (SIGSTOP) for 5 s while 330 clients publish to one
// tenant at once: 30 patient clients, and 300 that give up after 0.5 s, as a client whose own timeout is short
// does. With PUBLISH_CONFIRM_TIMEOUT 2 s and PUBLISH_MAX_PENDING 200:
//   - no request takes longer than PUBLISH_CONFIRM_TIMEOUT (+1 s of slack), queueing included (before: the
//     patient ones waited for each earlier envelope's timeout in turn);
//   - publishes past the per-tenant bound are answered 503 publish-queue-full at once, with Retry-After;
//   - a publish whose request ended before its envelope was handed to RabbitMQ is never sent: of the impatient
//     clients only those in the first envelope (taken at once) can be stored (before: all 300 were stored,
//     though none got a 202);
//   - of the publishes the service received (on a loaded machine an impatient client may give up before its
//     request reached it), exactly those it did not report as "not sent" are stored, so nothing handed over is
//     lost, and every 202 after the thaw is stored.
func TestPublishBoundsWhileRabbitMQFrozen(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	timeout := 2 * time.Second
	cfg.PublishConfirmTimeout = timeout
	p := startProc(t, "bounds", cfg, "PUBLISH_MAX_PENDING=200")
	tenant := createTenant(t, p.URL, "bounds", 1)
	waitConsumers(t, cfg.AMQPURL, []string{tenant}, 30*time.Second)
	require.Equal(t, http.StatusAccepted, publishWithin(p.URL, tenant, "warm", 0, 10*time.Second).status)

	thaw := freezeRabbitMQ(t, s)
	frozenAt := time.Now()
	var mu sync.Mutex
	var answers []boundedAnswer
	var wg sync.WaitGroup
	client := func(group string, n int, patience time.Duration) {
		defer wg.Done()
		a := publishWithin(p.URL, tenant, group, n, patience)
		mu.Lock()
		answers = append(answers, a)
		mu.Unlock()
	}
	for i := range 30 {
		wg.Add(1)
		go client("patient", i, 30*time.Second)
	}
	for i := range 300 {
		wg.Add(1)
		go client("impatient", i, 500*time.Millisecond)
	}
	wg.Wait()
	require.Less(t, time.Since(frozenAt), 5*time.Second, "the clients took longer than the freeze")
	time.Sleep(5*time.Second - time.Since(frozenAt))
	thaw()

	byGroup := map[string]map[int]int{}
	full := 0
	for _, a := range answers {
		if byGroup[a.group] == nil {
			byGroup[a.group] = map[int]int{}
		}
		byGroup[a.group][a.status]++
		if a.group == "patient" {
			require.NotZero(t, a.status, "a patient client got no answer within 30 s")
			require.LessOrEqual(t, a.duration, timeout+time.Second,
				"a publish waited longer than PUBLISH_CONFIRM_TIMEOUT %s: %+v (answers by group and status: %v)", timeout, a, byGroup)
		}
		if strings.Contains(a.body, "publish-queue-full") {
			full++
			require.Equal(t, http.StatusServiceUnavailable, a.status)
			require.NotEmpty(t, a.retry, "a publish-queue-full answer without Retry-After")
		}
	}
	t.Logf("answers by group and status while frozen: %v; %d refused as publish-queue-full", byGroup, full)
	require.Positive(t, full, "330 publishes at once with PUBLISH_MAX_PENDING=200: none was refused at once")
	var early []string
	for _, a := range answers {
		if a.status == http.StatusAccepted {
			early = append(early, fmt.Sprintf("%s %d: sent %s after the freeze, answered in %s", a.group, a.status,
				a.start.Sub(frozenAt).Round(time.Millisecond), a.duration.Round(time.Millisecond)))
		}
	}
	require.Empty(t, early, "a 202 while RabbitMQ was frozen")

	// After the thaw: a few more publishes are accepted; then everything settles.
	var after []string
	for i := range 10 {
		a := publishWithin(p.URL, tenant, "after", i, 10*time.Second)
		require.Equal(t, http.StatusAccepted, a.status, "a publish after the thaw: %+v", a)
		after = append(after, a.id)
	}
	conn := testenv.Connect(t, cfg.DatabaseURL)
	// The publishes the service received while frozen: on a loaded machine an impatient client can give up before
	// its connection or request reached the service, which then has nothing to store or report.
	// A request is counted once answered: read again with the others.
	var received int
	answered := func() int {
		return int(metric(t, p.URL, "msgsvc_http_requests_total", `method="POST"`, `route="/api/v1/messages"`)) - 1 - len(after)
	}
	notSent := func() int {
		return int(metric(t, p.URL, "msgsvc_messages_publish_failed_total", `reason="not_sent"`) +
			metric(t, p.URL, "msgsvc_messages_publish_failed_total", `reason="pending_limit"`))
	}
	var g map[string]int
	var ns int
	if !testenv.Wait(30*time.Second, func() bool {
		g, ns, received = storedGroups(t, conn, tenant), notSent(), answered()
		return g["after"] == len(after) && g["patient"]+g["impatient"]+ns >= received
	}) {
		t.Fatalf("the publishes handed to RabbitMQ were not all stored after the thaw: %d received, stored by group %v, reported not sent %d "+
			"(not_sent %v, pending_limit %v, blocked %v, broker %v)", received, g, ns,
			metric(t, p.URL, "msgsvc_messages_publish_failed_total", `reason="not_sent"`),
			metric(t, p.URL, "msgsvc_messages_publish_failed_total", `reason="pending_limit"`),
			metric(t, p.URL, "msgsvc_messages_publish_failed_total", `reason="blocked"`),
			metric(t, p.URL, "msgsvc_messages_publish_failed_total", `reason="broker"`))
	}
	time.Sleep(time.Second) // anything still on its way
	g, ns, received = storedGroups(t, conn, tenant), notSent(), answered()
	require.LessOrEqual(t, received, 330)
	t.Logf("of %d publishes received while frozen: stored by group: %v; reported not sent (not_sent + pending_limit): %d", received, g, ns)
	require.Equal(t, received, g["patient"]+g["impatient"]+ns,
		"stored (%v) plus reported not sent (%d) must be every publish received while frozen: a message reported not sent was stored, or one handed over was lost", g, ns)
	require.Less(t, g["impatient"], 100,
		"%d of the 300 publishes whose clients gave up after 0.5 s were stored: only the first envelope's may be", g["impatient"])
	var stored int
	require.NoError(t, conn.QueryRow(context.Background(), "SELECT count(*) FROM messages WHERE id = ANY($1)", after).Scan(&stored))
	require.Equal(t, len(after), stored, "a message answered 202 after the thaw was not stored")
}

// TestPublishFailsFastUnderMemoryAlarm raises a RabbitMQ memory alarm (vm_memory_high_watermark 0.00001)
// while a backlog of the tenant's messages waits in its queue (its partition locked, so the consumer cannot
// store them yet). RabbitMQ blocks publishing connections: publishes are answered 503 broker-blocked at once
// instead of waiting for PUBLISH_CONFIRM_TIMEOUT (10 s here) each, while the backlog, on the consumers' own
// connections, goes on being consumed and stored once the lock is gone. After the alarm, publishes are
// accepted again.
func TestPublishFailsFastUnderMemoryAlarm(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	timeout := 10 * time.Second
	cfg.PublishConfirmTimeout = timeout
	p := startProc(t, "alarm", cfg)
	tenant := createTenant(t, p.URL, "alarm", 1)
	waitConsumers(t, cfg.AMQPURL, []string{tenant}, 30*time.Second)
	conn := testenv.Connect(t, cfg.DatabaseURL)
	ctx := context.Background()

	// The backlog: the tenant's partition is locked against inserts while 300 messages are published.
	lock, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = lock.Rollback(ctx) }()
	_, err = lock.Exec(ctx, "LOCK TABLE "+pgx.Identifier{"messages_tenant_" + strings.ReplaceAll(tenant, "-", "")}.Sanitize()+" IN SHARE MODE")
	require.NoError(t, err)
	var backlog []string
	for b := range 3 {
		var msgs []string
		for i := range 100 {
			msgs = append(msgs, fmt.Sprintf(`{"payload":{"g":"backlog","n":%d}}`, b*100+i))
		}
		status, raw, err := call(http.DefaultClient, http.MethodPost, p.URL+"/api/v1/messages/batch",
			fmt.Appendf(nil, `{"tenant_id":%q,"messages":[%s]}`, tenant, strings.Join(msgs, ",")))
		require.NoError(t, err)
		require.Equal(t, http.StatusAccepted, status, string(raw))
		for _, id := range strings.Split(strings.SplitN(strings.SplitN(string(raw), `"ids":[`, 2)[1], "]", 2)[0], ",") {
			backlog = append(backlog, strings.Trim(id, `"`))
		}
	}
	require.Len(t, backlog, 300)

	s.RunScript(t, "rabbitmqctl", "set_vm_memory_high_watermark", "0.00001")
	t.Cleanup(func() { s.RunScript(t, "rabbitmqctl", "set_vm_memory_high_watermark", "0.8") })

	// The first publish after the alarm may be written before RabbitMQ says it blocks the connection; from
	// then on every publish is refused at once.
	var blocked []boundedAnswer
	deadline := time.Now().Add(30 * time.Second)
	for len(blocked) < 5 && time.Now().Before(deadline) {
		a := publishWithin(p.URL, tenant, "alarm", len(blocked), 2*timeout)
		require.NotEqual(t, http.StatusAccepted, a.status, "a publish accepted under a memory alarm: %+v", a)
		if strings.Contains(a.body, "broker-blocked") {
			require.Equal(t, http.StatusServiceUnavailable, a.status)
			blocked = append(blocked, a)
		} else {
			t.Logf("before the block was seen: %d %s after %s", a.status, a.body, a.duration)
		}
	}
	require.Len(t, blocked, 5, "publishes under a memory alarm were not refused as broker-blocked")
	for _, a := range blocked[1:] {
		require.Less(t, a.duration, timeout/2, "a publish under a memory alarm waited %s (PUBLISH_CONFIRM_TIMEOUT %s): %s", a.duration, timeout, a.body)
	}
	require.Positive(t, metric(t, p.URL, "msgsvc_messages_publish_failed_total", `reason="blocked"`))
	var took []string
	for _, a := range blocked {
		took = append(took, a.duration.Round(time.Millisecond).String())
	}
	t.Logf("under the memory alarm, publishes answered 503 broker-blocked after %s", strings.Join(took, ", "))

	// The backlog is consumed and stored while the alarm holds.
	require.NoError(t, lock.Rollback(ctx))
	testenv.Eventually(t, 30*time.Second, func() bool {
		var n int
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM messages WHERE id = ANY($1)", backlog).Scan(&n))
		return n == len(backlog)
	}, "the backlog was not stored under the memory alarm")
	a := publishWithin(p.URL, tenant, "alarm", 99, 2*timeout)
	require.Contains(t, a.body, "broker-blocked", "the alarm ended before the backlog was stored: the test proves nothing")

	s.RunScript(t, "rabbitmqctl", "set_vm_memory_high_watermark", "0.8")
	var ok boundedAnswer
	testenv.Eventually(t, 30*time.Second, func() bool {
		ok = publishWithin(p.URL, tenant, "after", 0, 2*timeout)
		return ok.status == http.StatusAccepted
	}, "publishes were not accepted again after the alarm")
	testenv.Eventually(t, 30*time.Second, func() bool {
		var n int
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM messages WHERE id = $1", ok.id).Scan(&n))
		return n == 1
	}, "the publish accepted after the alarm was not stored")
}
