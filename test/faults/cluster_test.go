package faults

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// rabbitCluster is the 3-node RabbitMQ cluster of deployments/local/services.sh (cluster-up), with one
// virtual host for the test.
type rabbitCluster struct {
	t      *testing.T
	script string
	nodes  []string // node names, node 1 first
	urls   []string // AMQP URLs of the test's virtual host, one per node
	vhost  string
}

// startCluster starts the cluster through the services script (stopping it again at the end when it was not
// running before) and creates a virtual host on it.
func startCluster(t *testing.T, s *testenv.Servers) *rabbitCluster {
	t.Helper()
	if s.Script == "" {
		s.RunScript(t, "cluster-up") // skips, or fails with TEST_REQUIRE_SERVICES=1
	}
	c := &rabbitCluster{t: t, script: s.Script}
	if exec.Command(c.script, "cluster-status").Run() != nil {
		began := time.Now()
		c.run("cluster-up")
		t.Logf("cluster-up took %s", time.Since(began).Round(100*time.Millisecond))
		t.Cleanup(func() { c.run("cluster-down") })
	} else {
		t.Cleanup(func() { _ = exec.Command(c.script, "cluster-up").Run() }) // restarts a node the test left down
	}
	vals := map[string]string{}
	raw, err := os.ReadFile(strings.TrimSpace(c.run("cluster-env")))
	require.NoError(t, err)
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vals[k] = v
		}
	}
	c.nodes = strings.Split(vals["RABBITMQ_CLUSTER_NODES"], ",")
	mgmt := strings.Split(vals["RABBITMQ_CLUSTER_MANAGEMENT_URLS"], ",")
	nodeURLs := strings.Split(vals["AMQP_URLS"], ",")
	require.Len(t, c.nodes, 3, "cluster env: %s", raw)
	require.Len(t, nodeURLs, 3)

	cs := &testenv.Servers{DatabaseURL: s.DatabaseURL, AMQPURL: nodeURLs[0], ManagementURL: mgmt[0]}
	v, err := url.Parse(cs.NewVHost(t))
	require.NoError(t, err)
	c.vhost = strings.TrimPrefix(v.Path, "/")
	for _, n := range nodeURLs {
		u, err := url.Parse(n)
		require.NoError(t, err)
		u.Path = v.Path
		c.urls = append(c.urls, u.String())
	}
	return c
}

// run runs the services script and returns its standard output; it fails t when the script fails.
func (c *rabbitCluster) run(args ...string) string {
	c.t.Helper()
	out, stderr, err := c.try(args...)
	require.NoError(c.t, err, "%s %v: %s%s", c.script, args, out, stderr)
	return out
}

// try runs the services script and returns its standard output and error, failing nothing.
func (c *rabbitCluster) try(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(c.script, args...)
	var e bytes.Buffer
	cmd.Stderr = &e
	out, err := cmd.Output()
	return string(out), e.String(), err
}

// dumpOnFailure logs, when t failed, what each node says of the virtual host's consumers (their channel's
// process, so its node, and whether the single active consumer) and of queue's Raft members: a queue that
// holds ready messages for a consumer it counts but does not serve is told apart from the service's own stall.
func (c *rabbitCluster) dumpOnFailure(t *testing.T, queue string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for n := 1; n <= len(c.nodes); n++ {
			for _, args := range [][]string{
				{"node-ctl", fmt.Sprint(n), "-q", "list_consumers", "-p", c.vhost, "queue_name", "channel_pid", "consumer_tag",
					"active", "activity_status", "prefetch_count"},
				{"node-ctl", fmt.Sprint(n), "-q", "list_queues", "-p", c.vhost, "name", "leader", "messages_ready",
					"messages_unacknowledged", "consumers"},
			} {
				out, stderr, err := c.try(args...)
				t.Logf("node %d: %s: %v\n%s%s", n, args[3], err, out, stderr)
			}
		}
		for n := 1; n <= len(c.nodes); n++ {
			out, stderr, err := c.try("node-ctl", fmt.Sprint(n), "eval",
				fmt.Sprintf(`rabbit_quorum_queue:status(<<%q>>, <<%q>>).`, c.vhost, queue))
			t.Logf("node %d: quorum status of %s: %v\n%s%s", n, queue, err, out, stderr)
		}
	})
}

// node returns the number (1-3) of a node name.
func (c *rabbitCluster) node(name string) int {
	c.t.Helper()
	i := slices.Index(c.nodes, name)
	require.GreaterOrEqual(c.t, i, 0, "unknown node %q", name)
	return i + 1
}

// ctl runs rabbitmqctl against node n (exact figures, unlike the management API's periodic statistics).
func (c *rabbitCluster) ctl(n int, args ...string) string {
	c.t.Helper()
	return c.run(append([]string{"node-ctl", fmt.Sprint(n)}, args...)...)
}

// quorum is a quorum queue's leader and members as rabbitmqctl reports them.
type quorum struct {
	Leader  string
	Members []string
}

// queue asks node n for queue's leader and members.
func (c *rabbitCluster) queue(n int, queue string) quorum {
	c.t.Helper()
	var qs []struct {
		Name    string          `json:"name"`
		Leader  string          `json:"leader"`
		Members json.RawMessage `json:"members"` // "" for a classic queue
	}
	out := c.ctl(n, "-q", "list_queues", "-p", c.vhost, "name", "leader", "members", "--formatter", "json")
	require.NoError(c.t, json.Unmarshal([]byte(out), &qs), out)
	for _, q := range qs {
		if q.Name == queue {
			r := quorum{Leader: q.Leader}
			require.NoError(c.t, json.Unmarshal(q.Members, &r.Members), out)
			sort.Strings(r.Members)
			return r
		}
	}
	c.t.Fatalf("queue %s not on node %d: %s", queue, n, out)
	return quorum{}
}

// connectedNodes asks node n to which nodes the test's virtual host has client connections (rabbitmqctl
// names no node, but each node has its own AMQP port).
func (c *rabbitCluster) connectedNodes(n int) []string {
	c.t.Helper()
	var conns []struct {
		VHost string `json:"vhost"`
		Port  int    `json:"port"`
	}
	out := c.ctl(n, "-q", "list_connections", "vhost", "port", "--formatter", "json")
	require.NoError(c.t, json.Unmarshal([]byte(out), &conns), out)
	var nodes []string
	for _, cn := range conns {
		if cn.VHost != c.vhost {
			continue
		}
		i := slices.IndexFunc(c.urls, func(u string) bool { return strings.HasSuffix(u, fmt.Sprintf(":%d/%s", cn.Port, c.vhost)) })
		require.GreaterOrEqual(c.t, i, 0, "a connection to port %d, which is no node's", cn.Port)
		if !slices.Contains(nodes, c.nodes[i]) {
			nodes = append(nodes, c.nodes[i])
		}
	}
	sort.Strings(nodes)
	return nodes
}

// transferLeader moves queue's leadership to node target, asking node via.
func (c *rabbitCluster) transferLeader(via int, queue string, target int) {
	c.t.Helper()
	out := c.ctl(via, "eval", fmt.Sprintf(
		`{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"%s">>, queue, <<"%s">>)), rabbit_quorum_queue:transfer_leadership(Q, '%s').`,
		c.vhost, queue, c.nodes[target-1]))
	require.Contains(c.t, out, "migrated", out)
	testenv.Eventually(c.t, 15*time.Second, func() bool { return c.queue(via, queue).Leader == c.nodes[target-1] },
		"queue %s not led by node %d", queue, target)
}

// nodeKill is one SIGKILL of a cluster node mid-stream, as the test saw it.
type nodeKill struct {
	what                 string
	node                 int
	oldLeader, newLeader string
	sent                 time.Time // node-kill was run
	killed               time.Time // node-kill returned: the node's Erlang VM is gone
	back                 time.Time // node-start returned: the node is up and serving again
	restart              time.Duration

	// Filled in from the answers once the stream stopped.
	resumed  time.Duration // from the kill to the first 202 of a busy tenant's request started after it
	gap      time.Duration // longest time without a 202 of the busy tenant, from 2 s before the kill until the node was back
	rejected int           // publishes started between the kill and the node's return not answered 202
	answers  string        // the publishes started in that time, by status
	lastFail time.Duration // from the kill to the end of the last publish not answered 202 in that time
}

// measure fills in what the clients saw between the kill and the node's return.
func (k *nodeKill) measure(answers []answer, busy string) {
	var firstOK time.Time
	var during []answer
	for _, a := range answers {
		if a.start.Before(k.sent) || !a.start.Before(k.back) {
			continue
		}
		during = append(during, a)
		end := a.start.Add(a.duration)
		if a.status != http.StatusAccepted {
			k.rejected++
			k.lastFail = max(k.lastFail, end.Sub(k.killed))
		} else if a.tenant == busy && a.start.After(k.killed) && (firstOK.IsZero() || end.Before(firstOK)) {
			firstOK = end
		}
	}
	k.resumed = firstOK.Sub(k.killed)
	k.answers = statuses(during)
	k.gap = longestGap(answers, busy, k.sent.Add(-2*time.Second), k.back)
}

func (k nodeKill) String() string {
	return fmt.Sprintf("%s: killed node %d (leader %s), new leader %s; busy tenant's first 202 %s after the kill, its "+
		"longest gap between 202s %s; %d publishes not accepted while the node was down (%s over %s, the last ending %s "+
		"after the kill); node-start took %s", k.what, k.node, k.oldLeader, k.newLeader, k.resumed.Round(time.Millisecond),
		k.gap.Round(time.Millisecond), k.rejected, k.answers, k.back.Sub(k.killed).Round(100*time.Millisecond),
		k.lastFail.Round(100*time.Millisecond), k.restart.Round(100*time.Millisecond))
}

// TestClusterNodeKilledMidStream runs the service against a 3-node RabbitMQ cluster (AMQP_URLS) while clients
// publish, mostly into one busy tenant, and kills (SIGKILL) the node that leads the busy tenant's quorum queue
// twice: first when the service is connected to that node too (its connection is lost and it reconnects to the
// next node), then when the node only leads the queue. Each time the queue gets a new leader on a surviving
// node and publishing resumes within seconds; in the end every message answered 202 is stored exactly once.
func TestClusterNodeKilledMidStream(t *testing.T) {
	s := testenv.Get(t)
	cl := startCluster(t, s)
	cfg := s.Config(t)
	cfg.AMQPURL = cl.urls[0]
	cfg.RabbitMQManagementURL = "" // the test's own single node; reconciliation is not under test here
	cfg.PublishConfirmTimeout = 2 * time.Second
	p := startProc(t, "cluster", cfg, "AMQP_URLS="+strings.Join(cl.urls, ","))

	busy := createTenant(t, p.URL, "cluster-busy", 3)
	quiet := createTenant(t, p.URL, "cluster-quiet", 1)
	busyQueue := consumer.QueueName(uuid.MustParse(busy))
	tenants := []string{busy, quiet}
	cl.dumpOnFailure(t, busyQueue)

	// Replicated on every node, led by the node the service declared it through (node 1, its first URL).
	require.Equal(t, cl.nodes, cl.queue(1, busyQueue).Members, "the busy tenant's quorum queue is not on all 3 nodes")
	require.Equal(t, []string{cl.nodes[0]}, cl.connectedNodes(1), "the service is connected to node 1, its first URL")

	st := startStream(t, p.URL, []string{busy, busy, busy, quiet}, 4, 10*time.Millisecond)
	begin := time.Now()

	// kill kills node n, which leads the busy tenant's queue, asking node via about the queue.
	kill := func(what string, n, via int) *nodeKill {
		t.Helper()
		k := &nodeKill{what: what, node: n, oldLeader: cl.queue(via, busyQueue).Leader}
		require.Equal(t, cl.nodes[n-1], k.oldLeader)
		testenv.Eventually(t, 30*time.Second, func() bool { return st.count(http.StatusAccepted, time.Now().Add(-time.Second)) > 0 },
			"no publish accepted before the kill")
		k.sent = time.Now()
		cl.run("node-kill", fmt.Sprint(n))
		k.killed = time.Now()
		// RabbitMQ 3.10 nacks every publish on a channel that first publishes to the queue within about 0.4 s of
		// its leader's node dying, until that node is back (measured with plain amqp091 channels): a publisher
		// whose channels all reopened that early must replace them after a nack (broker.Publisher does), or this
		// waits in vain.
		testenv.Eventually(t, 60*time.Second, func() bool {
			return slices.ContainsFunc(st.snapshot(), func(a answer) bool {
				return a.tenant == busy && a.status == http.StatusAccepted && a.start.After(k.killed)
			})
		}, "%s: publishing into the busy tenant did not resume after node %d was killed", what, n)
		testenv.Eventually(t, 30*time.Second, func() bool {
			l := cl.queue(via, busyQueue).Leader
			return l != "" && l != k.oldLeader
		}, "%s: the busy tenant's queue got no new leader after node %d was killed", what, n)
		k.newLeader = cl.queue(via, busyQueue).Leader
		time.Sleep(3 * time.Second) // publish on while the node is gone
		started := time.Now()
		cl.run("node-start", fmt.Sprint(n))
		k.back = time.Now()
		k.restart = k.back.Sub(started)
		testenv.Eventually(t, 30*time.Second, func() bool {
			_, _, c := testenv.QueueState(t, cl.urls[via-1], busyQueue)
			return c >= 1
		}, "%s: the busy tenant has no consumer", what)
		return k
	}

	// kill waits for a 202 of the last second first: the stream runs.
	first := kill("connected node and queue leader", 1, 2)
	// The service moved to node 2 (the next URL). Make a node it is not connected to lead the queue, then kill that.
	connected := cl.connectedNodes(2)
	require.Len(t, connected, 1, "the service's connections are on one node")
	require.NotEqual(t, cl.nodes[0], connected[0], "the service did not leave the killed node")
	target, via := 1, cl.node(connected[0])
	if target == via {
		target = 3
	}
	time.Sleep(3 * time.Second)
	transferred := time.Now()
	cl.transferLeader(via, busyQueue, target)
	time.Sleep(3 * time.Second)
	second := kill("queue leader only", target, via)
	require.Equal(t, connected, cl.connectedNodes(via), "killing a node the service is not connected to moved its connections")
	time.Sleep(2 * time.Second)
	st.halt()

	answers := st.snapshot()
	for _, an := range answers {
		require.Contains(t, []int{http.StatusAccepted, http.StatusServiceUnavailable}, an.status, "unexpected answer: %s", statuses(answers))
	}
	waitConsumers(t, cl.urls[0], tenants, 30*time.Second)
	o := settle(t, cfg.DatabaseURL, cl.urls[0], tenants, accepted(t, answers), 90*time.Second)
	require.Zero(t, o.deadLettered)
	require.Equal(t, cl.nodes, cl.queue(1, busyQueue).Members, "the queue lost a member")

	t.Logf("cluster node killed twice in %s: %s; answers %s", time.Since(begin).Round(time.Second), o, statuses(answers))
	t.Logf("redeliveries absorbed by idempotent storage: %.0f", metric(t, p.URL, "msgsvc_messages_duplicates_total"))
	for _, k := range []*nodeKill{first, second} {
		k.measure(answers, busy)
		t.Log(k)
	}
	phases := []struct {
		name string
		from time.Time
	}{{"before the first kill", begin}, {"first kill", first.sent}, {"node back", first.back},
		{"leadership transfer", transferred}, {"second kill", second.sent}, {"node back", second.back}}
	var b strings.Builder
	for i, ph := range phases {
		to := time.Now()
		if i+1 < len(phases) {
			to = phases[i+1].from
		}
		var in []answer
		for _, a := range answers {
			if !a.start.Before(ph.from) && a.start.Before(to) {
				in = append(in, a)
			}
		}
		fmt.Fprintf(&b, "; from %s (+%s): %s", ph.name, ph.from.Sub(begin).Round(100*time.Millisecond), statuses(in))
	}
	t.Logf("answers by phase%s", b.String())
}

// longestGap returns the longest time between two consecutive 202 answers (by the time they arrived) of tenant
// within [from, to].
func longestGap(answers []answer, tenant string, from, to time.Time) time.Duration {
	var done []time.Time
	for _, a := range answers {
		if a.tenant == tenant && a.status == http.StatusAccepted {
			if d := a.start.Add(a.duration); !d.Before(from) && !d.After(to) {
				done = append(done, d)
			}
		}
	}
	slices.SortFunc(done, func(a, b time.Time) int { return a.Compare(b) })
	var gap time.Duration
	for i := 1; i < len(done); i++ {
		gap = max(gap, done[i].Sub(done[i-1]))
	}
	return gap
}
