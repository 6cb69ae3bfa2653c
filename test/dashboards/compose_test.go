package dashboards

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/acme/msgsvc/platform/config"
)

// TestComposeConfiguresTheServiceByEnvironment checks that every variable compose gives the service is one
// the configuration reads, and that together they are a valid configuration.
func TestComposeConfiguresTheServiceByEnvironment(t *testing.T) {
	c := loadCompose(t)
	svc, ok := c.Services["msgsvc"]
	require.True(t, ok, "docker-compose.yml has no msgsvc service")
	require.NotEmpty(t, svc.Environment)

	read := map[string]bool{}
	_, _ = config.LoadFrom(func(name string) string { read[name] = true; return "" })
	for name := range svc.Environment {
		require.True(t, read[name], "msgsvc's environment sets %s, which the configuration never reads", name)
	}
	_, err := config.LoadFrom(func(name string) string { return interpolate(svc.Environment[name]) })
	require.NoError(t, err, "compose's environment is not a valid configuration")

	require.NotNil(t, svc.Build, "msgsvc must be built from deployments/Dockerfile")
	ctx := filepath.Join(root, "deployments", svc.Build.Context)
	require.FileExists(t, filepath.Join(ctx, "go.mod"), "build context %s is not the repository root", svc.Build.Context)
	require.FileExists(t, filepath.Join(ctx, svc.Build.Dockerfile))
}

var defaultRe = regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}`)

// interpolate does what compose does to ${NAME:-default} when NAME is not set.
func interpolate(v string) string { return defaultRe.ReplaceAllString(v, "$1") }

// TestComposeServicesAreHealthCheckedAndOrdered checks health checks, depends_on conditions and that every
// file compose mounts exists.
func TestComposeServicesAreHealthCheckedAndOrdered(t *testing.T) {
	c := loadCompose(t)
	for _, name := range []string{"msgsvc", "postgres", "rabbitmq", "prometheus", "grafana"} {
		require.Contains(t, c.Services, name)
	}
	for name, svc := range c.Services {
		require.NotNil(t, svc.Healthcheck, "%s has no healthcheck", name)
		require.NotEmpty(t, svc.Healthcheck.Test, "%s has no healthcheck test", name)
		for dep, cond := range svc.DependsOn {
			require.Contains(t, c.Services, dep, "%s depends on unknown service %s", name, dep)
			require.Equal(t, "service_healthy", cond["condition"], "%s should wait for %s to be healthy", name, dep)
		}
		for _, v := range svc.Volumes {
			src := strings.SplitN(v, ":", 2)[0]
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				_, err := os.Stat(filepath.Join(root, "deployments", src))
				require.NoError(t, err, "%s mounts %s", name, src)
			} else {
				require.Contains(t, c.Volumes, src, "%s mounts undeclared volume %s", name, src)
			}
		}
	}
	require.Contains(t, c.Services["msgsvc"].DependsOn, "postgres")
	require.Contains(t, c.Services["msgsvc"].DependsOn, "rabbitmq")
	require.Contains(t, c.Services["grafana"].DependsOn, "prometheus")
}

// TestPrometheusScrapesTheComposeServices checks that every scrape target is a compose service, that the
// service and RabbitMQ's Prometheus endpoint are scraped, and that RabbitMQ's plugin is enabled.
func TestPrometheusScrapesTheComposeServices(t *testing.T) {
	p := loadPromConfig(t)
	c := loadCompose(t)
	targets := map[string]bool{}
	for _, sc := range p.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				host := strings.SplitN(tg, ":", 2)[0]
				require.Contains(t, c.Services, host, "job %s scrapes %s, which is not a compose service", sc.JobName, tg)
				targets[tg] = true
			}
		}
	}
	require.True(t, targets["msgsvc:8080"], "Prometheus does not scrape the service")
	require.True(t, targets["rabbitmq:15692"], "Prometheus does not scrape RabbitMQ's Prometheus endpoint")

	plugins, err := os.ReadFile(filepath.Join(root, "deployments/rabbitmq/enabled_plugins"))
	require.NoError(t, err)
	require.Contains(t, string(plugins), "rabbitmq_prometheus")
	require.Contains(t, string(plugins), "rabbitmq_management")
}

// TestGrafanaProvisionsTheDashboard checks that the provisioned datasource is the one the dashboards use and
// that the dashboard provider reads the directory compose mounts them into.
func TestGrafanaProvisionsTheDashboard(t *testing.T) {
	var ds struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	raw, err := os.ReadFile(filepath.Join(root, "deployments/grafana/provisioning/datasources/prometheus.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(raw, &ds))
	require.Len(t, ds.Datasources, 1)
	require.Equal(t, "prometheus", ds.Datasources[0].Type)
	require.Equal(t, "http://prometheus:9090", ds.Datasources[0].URL)
	uid := ds.Datasources[0].UID

	for _, file := range dashboardFiles(t) {
		d := loadDashboard(t, file)
		require.NotEmpty(t, d.UID, file)
		var dsVar any
		for _, v := range d.Templating.List {
			if v.Type == "datasource" {
				dsVar = v.Current.Value
			}
		}
		var check func(ps []panel)
		check = func(ps []panel) {
			for _, p := range ps {
				if p.Type != "row" {
					require.NotNil(t, p.Datasource, "%s: panel %q has no datasource", file, p.Title)
					if p.Datasource.UID == "${datasource}" {
						require.Equal(t, uid, dsVar, "%s: the datasource variable's default is not the provisioned uid", file)
					} else {
						require.Equal(t, uid, p.Datasource.UID, "%s: panel %q", file, p.Title)
					}
				}
				check(p.Panels)
			}
		}
		check(d.Panels)
	}

	var prov struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	raw, err = os.ReadFile(filepath.Join(root, "deployments/grafana/provisioning/dashboards/msgsvc.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(raw, &prov))
	require.Len(t, prov.Providers, 1)
	mount := "./grafana/dashboards:" + prov.Providers[0].Options.Path
	require.True(t, slices.ContainsFunc(loadCompose(t).Services["grafana"].Volumes, func(v string) bool {
		return strings.HasPrefix(v, mount)
	}), "grafana does not mount the dashboards at %s", prov.Providers[0].Options.Path)
}
