package dashboards

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/test/testenv"
)

// series maps each sample name of a scrape to the label names seen on it.
type series map[string]map[string]bool

func (s series) add(name string, labels ...string) {
	if s[name] == nil {
		s[name] = map[string]bool{}
	}
	for _, l := range labels {
		s[name][l] = true
	}
}

// hasLabelValue reports whether some sample of name carries label=value in the raw scrape.
func hasLabelValue(scrape, name, label, value string) bool {
	return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{[^}]*\b` + regexp.QuoteMeta(label) + `="` + regexp.QuoteMeta(value) + `"`).MatchString(scrape)
}

// parseExposition reads the Prometheus text format: sample names and their label names.
func parseExposition(t *testing.T, text string) series {
	t.Helper()
	s := series{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		end := strings.IndexAny(line, "{ ")
		require.Positive(t, end, "bad exposition line %q", line)
		name := line[:end]
		var labels []string
		if line[end] == '{' {
			rest := line[end+1:]
			for rest != "" && rest[0] != '}' {
				eq := strings.IndexByte(rest, '=')
				require.Positive(t, eq, "bad labels in %q", line)
				labels = append(labels, strings.TrimLeft(rest[:eq], ", "))
				_, n, err := lexString(rest[eq+1:])
				require.NoError(t, err, line)
				rest = strings.TrimLeft(rest[eq+1+n:], ",")
			}
		}
		s.add(name, labels...)
	}
	return s
}

func scrape(t *testing.T, u string) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	require.NoError(t, err, "scrape %s", u)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "scrape %s: %s", u, body)
	return "\n" + string(body)
}

// recorder is the Registerer the modules get in this test: it remembers every collector registered, so
// metric vectors without a child yet (a failure that did not happen) still count as exported.
type recorder struct {
	prometheus.Registerer
	mu         sync.Mutex
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	r.mu.Lock()
	r.collectors = append(r.collectors, c)
	r.mu.Unlock()
	return r.Registerer.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

var (
	descNameRe   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descLabelsRe = regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
)

// declared returns the series the recorded collectors describe, with the sample names Prometheus derives
// for histograms and summaries.
func (r *recorder) declared() series {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := series{}
	for _, c := range r.collectors {
		ch := make(chan *prometheus.Desc)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := descNameRe.FindStringSubmatch(d.String())
			if m == nil {
				continue
			}
			var labels []string
			if l := descLabelsRe.FindStringSubmatch(d.String()); l != nil && l[1] != "" {
				for _, name := range strings.Split(l[1], ",") {
					name = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(name), "c("), ")")
					labels = append(labels, name)
				}
			}
			switch c.(type) {
			case prometheus.Histogram, *prometheus.HistogramVec:
				s.add(m[1]+"_bucket", append(labels, "le")...)
				s.add(m[1]+"_sum", labels...)
				s.add(m[1]+"_count", labels...)
			case prometheus.Summary, *prometheus.SummaryVec:
				s.add(m[1], append(labels, "quantile")...)
				s.add(m[1]+"_sum", labels...)
				s.add(m[1]+"_count", labels...)
			default:
				s.add(m[1], labels...)
			}
		}
	}
	return s
}

// prometheusLabels are attached by Prometheus itself at scrape time.
var prometheusLabels = map[string]bool{"job": true, "instance": true}

// check verifies one query against the exported series: every metric exists, every matched label exists on
// that metric, every grouping label exists on one of the query's metrics or is made by label_replace.
func check(t *testing.T, q query, u usage, exported func(metric string) (map[string]bool, bool)) {
	t.Helper()
	known := map[string]bool{}
	for _, l := range u.Produced {
		known[l] = true
	}
	for _, sel := range u.Selectors {
		labels, ok := exported(sel.Metric)
		if !ok {
			t.Errorf("%s: metric %s is not exported\n  query: %s", q.Where, sel.Metric, q.Expr)
			continue
		}
		for l := range labels {
			known[l] = true
		}
		for _, l := range sel.Labels {
			if !labels[l] && !prometheusLabels[l] {
				t.Errorf("%s: metric %s has no label %q (it has %v)\n  query: %s", q.Where, sel.Metric, l, keys(labels), q.Expr)
			}
		}
	}
	for _, l := range u.Grouping {
		if !known[l] && !prometheusLabels[l] {
			t.Errorf("%s: grouping label %q is on none of the query's metrics\n  query: %s", q.Where, l, q.Expr)
		}
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// rabbitPaths returns the paths (with query) that prometheus.yml scrapes on RabbitMQ's Prometheus port.
func rabbitPaths(t *testing.T) []string {
	t.Helper()
	var paths []string
	for _, sc := range loadPromConfig(t).ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			if !slices.ContainsFunc(st.Targets, func(s string) bool { return strings.HasSuffix(s, ":15692") }) {
				continue
			}
			p := sc.MetricsPath
			if p == "" {
				p = "/metrics"
			}
			if len(sc.Params) > 0 {
				p += "?" + url.Values(sc.Params).Encode()
			}
			paths = append(paths, p)
		}
	}
	require.NotEmpty(t, paths, "prometheus.yml scrapes nothing on RabbitMQ's Prometheus port 15692")
	return paths
}

// TestDashboardQueriesOnlyExportedMetrics starts the service against real PostgreSQL and RabbitMQ, creates a
// tenant and publishes a message so that labelled series exist, and checks every query of the dashboards
// against the service's /metrics and RabbitMQ's Prometheus endpoint as prometheus.yml scrapes it.
func TestDashboardQueriesOnlyExportedMetrics(t *testing.T) {
	qs := queries(t)
	usages := make([]usage, len(qs))
	for i, q := range qs {
		u, err := parsePromQL(q.Expr)
		require.NoError(t, err, "%s: %s", q.Where, q.Expr)
		usages[i] = u
	}

	s := testenv.Get(t)
	rec := &recorder{}
	a := testenv.Start(t, s.Config(t), fx.Decorate(func(r prometheus.Registerer) prometheus.Registerer {
		rec.Registerer = r
		return rec
	}))
	tenant := a.CreateTenant(testenv.RandomName("dash-"), 2)
	a.Publish(tenant, map[string]any{"hello": "dashboard"})
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/no-such-route", nil).Status)

	var text string
	testenv.Eventually(t, 15*time.Second, func() bool {
		text = scrape(t, a.URL+"/metrics")
		return hasLabelValue(text, "msgsvc_messages_stored_total", "tenant", tenant)
	}, "the message was not counted as stored for tenant %s", tenant)
	for _, name := range []string{"msgsvc_messages_published_total", "msgsvc_consumer_workers", "msgsvc_consumer_inflight"} {
		require.True(t, hasLabelValue(text, name, "tenant", tenant), "no %s series for tenant %s", name, tenant)
	}

	svc := parseExposition(t, text)
	for name, labels := range rec.declared() {
		svc.add(name, keys(labels)...)
	}
	require.NotEmpty(t, rec.collectors, "the Registerer decorator saw no collector")

	t.Run("readme", func(t *testing.T) { checkREADME(t, svc) })

	rabbit := rabbitSeries(t, a, tenant)
	for i, q := range qs {
		if rabbit == nil && slices.ContainsFunc(usages[i].Selectors, isRabbit) {
			continue
		}
		check(t, q, usages[i], func(m string) (map[string]bool, bool) {
			if isRabbit(selector{Metric: m}) {
				l, ok := rabbit[m]
				return l, ok
			}
			l, ok := svc[m]
			return l, ok
		})
	}
	if rabbit == nil {
		t.Skip("TEST_RABBITMQ_PROMETHEUS_URL is not set: queries of rabbitmq_* metrics not checked")
	}
}

func isRabbit(s selector) bool { return strings.HasPrefix(s.Metric, "rabbitmq_") }

// rabbitSeries scrapes RabbitMQ's Prometheus endpoint (TEST_RABBITMQ_PROMETHEUS_URL) at the paths
// prometheus.yml scrapes, once the tenant's queue shows there. Without the variable it answers nil, or fails
// t with TEST_REQUIRE_SERVICES=1.
func rabbitSeries(t *testing.T, a *testenv.App, tenant string) series {
	t.Helper()
	base := os.Getenv("TEST_RABBITMQ_PROMETHEUS_URL")
	if base == "" {
		if os.Getenv("TEST_REQUIRE_SERVICES") == "1" {
			t.Fatal("TEST_RABBITMQ_PROMETHEUS_URL is not set (deployments/local/services.sh writes RABBITMQ_PROMETHEUS_URL; `go tool task test` passes it)")
		}
		return nil
	}
	queue := "tenant." + tenant
	vhost := strings.TrimPrefix(mustParseURL(t, a.Config.AMQPURL).Path, "/")
	var rabbit series
	// Queue metrics appear once RabbitMQ has emitted the queue's statistics (every 5 s by default).
	testenv.Eventually(t, 30*time.Second, func() bool {
		rabbit = series{}
		found := false
		for _, p := range rabbitPaths(t) {
			body := scrape(t, strings.TrimRight(base, "/")+p)
			for name, labels := range parseExposition(t, body) {
				rabbit.add(name, keys(labels)...)
			}
			found = found || strings.Contains(body, fmt.Sprintf(`vhost="%s",queue="%s"`, vhost, queue))
		}
		return found
	}, "RabbitMQ's Prometheus endpoint never showed queue %s of vhost %s", queue, vhost)
	return rabbit
}

func mustParseURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}

var metricNameRe = regexp.MustCompile(`\b(msgsvc_[a-z0-9_]+|promhttp_[a-z0-9_]+)\b`)

// metricsDoc is the list of metrics, next to the registry they are registered on.
const metricsDoc = "platform/metrics/README.md"

// checkREADME verifies that platform/metrics/README.md names every metric family the service exports
// (besides the go_* and process_* collectors, which it describes as groups) and no other, and that README.md
// names no metric the service does not export.
func checkREADME(t *testing.T, svc series) {
	raw, err := os.ReadFile(filepath.Join(root, metricsDoc))
	require.NoError(t, err)
	doc := string(raw)
	require.Contains(t, doc, "go_", "%s should mention the Go runtime collector", metricsDoc)
	require.Contains(t, doc, "process_", "%s should mention the process collector", metricsDoc)
	require.Contains(t, doc, "METRICS_PER_TENANT")

	families := map[string]bool{}
	for name := range svc {
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base := strings.TrimSuffix(name, suffix); base != name && svc[base+"_bucket"] != nil {
				name = base
			}
		}
		families[name] = true
	}
	listed := map[string]bool{}
	for _, m := range metricNameRe.FindAllString(doc, -1) {
		listed[m] = true
	}
	for f := range families {
		require.True(t, listed[f], "%s does not list %s", metricsDoc, f)
	}
	for l := range listed {
		require.True(t, families[l], "%s lists %s, which the service does not export", metricsDoc, l)
	}

	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	require.NoError(t, err)
	for _, m := range metricNameRe.FindAllString(string(readme), -1) {
		require.True(t, families[m], "README.md names %s, which the service does not export", m)
	}
}
