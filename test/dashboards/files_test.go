// Package dashboards checks the operability files under deployments/ against the real service and RabbitMQ:
// every metric the Grafana dashboard queries must be one they export, with the labels the queries use; the
// compose file configures the service with variables it really reads; Prometheus scrapes what the dashboard
// needs; platform/metrics/README.md lists every metric.
package dashboards

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

const root = "../.."

// query is one PromQL expression of a dashboard and where it is.
type query struct {
	Where string // dashboard file, panel title and refId, or template variable
	Expr  string
}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name    string          `json:"name"`
			Type    string          `json:"type"`
			Query   json.RawMessage `json:"query"`
			Current struct {
				Value any `json:"value"`
			} `json:"current"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title      string `json:"title"`
	Type       string `json:"type"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

// dashboardFiles returns the dashboards Grafana provisions.
func dashboardFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "deployments/grafana/dashboards/*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no dashboard under deployments/grafana/dashboards")
	return files
}

func loadDashboard(t *testing.T, file string) dashboard {
	t.Helper()
	raw, err := os.ReadFile(file)
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(raw, &d), file)
	return d
}

var labelValuesRe = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)

// queries returns every PromQL expression of the dashboards: panel targets and query variables
// (label_values(expr, label) is turned into expr plus a grouping on label, so both are checked).
func queries(t *testing.T) []query {
	t.Helper()
	var qs []query
	for _, file := range dashboardFiles(t) {
		d := loadDashboard(t, file)
		name := filepath.Base(file)
		var walk func(ps []panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				for _, tg := range p.Targets {
					require.NotEmpty(t, tg.Expr, "%s: panel %q target %s has no expr", name, p.Title, tg.RefID)
					qs = append(qs, query{Where: fmt.Sprintf("%s: panel %q, query %s", name, p.Title, tg.RefID), Expr: tg.Expr})
				}
				walk(p.Panels)
			}
		}
		walk(d.Panels)
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			var q string
			if json.Unmarshal(v.Query, &q) != nil {
				var obj struct {
					Query string `json:"query"`
				}
				require.NoError(t, json.Unmarshal(v.Query, &obj), "%s: variable %s", name, v.Name)
				q = obj.Query
			}
			where := fmt.Sprintf("%s: variable $%s", name, v.Name)
			if m := labelValuesRe.FindStringSubmatch(q); m != nil {
				q = fmt.Sprintf("group by (%s) (%s)", m[2], m[1])
			}
			qs = append(qs, query{Where: where, Expr: q})
		}
	}
	return qs
}

// promConfig is the part of prometheus.yml the tests read.
type promConfig struct {
	ScrapeConfigs []struct {
		JobName       string              `yaml:"job_name"`
		MetricsPath   string              `yaml:"metrics_path"`
		Params        map[string][]string `yaml:"params"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func loadPromConfig(t *testing.T) promConfig {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deployments/prometheus/prometheus.yml"))
	require.NoError(t, err)
	var c promConfig
	require.NoError(t, yaml.Unmarshal(raw, &c))
	require.NotEmpty(t, c.ScrapeConfigs)
	return c
}

// composeFile is the part of docker-compose.yml the tests read.
type composeFile struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Environment map[string]string         `yaml:"environment"`
		Volumes     []string                  `yaml:"volumes"`
		Healthcheck *struct{ Test []string }  `yaml:"healthcheck"`
		DependsOn   map[string]map[string]any `yaml:"depends_on"`
		Ports       []string                  `yaml:"ports"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deployments/docker-compose.yml"))
	require.NoError(t, err)
	var c composeFile
	require.NoError(t, yaml.Unmarshal(raw, &c))
	return c
}
