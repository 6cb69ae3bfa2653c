package compose

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

const root = "../.."

type composeFile struct {
	Services map[string]struct {
		Image    string   `yaml:"image"`
		Profiles []string `yaml:"profiles"`
	} `yaml:"services"`
}

func loadComposeFile(t *testing.T, name string) composeFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deployments", name))
	require.NoError(t, err)
	var c composeFile
	require.NoError(t, yaml.Unmarshal(raw, &c), name)
	return c
}

// TestLocalOverrideUsesTheImagesBuiltLocally checks, without Docker, that deployments/docker-compose.local.yml
// overrides only services of the main compose file, gives every service that runs an image that
// deployments/images/build.sh builds, and leaves out only Grafana (which has no Debian package).
func TestLocalOverrideUsesTheImagesBuiltLocally(t *testing.T) {
	main := loadComposeFile(t, "docker-compose.yml")
	local := loadComposeFile(t, "docker-compose.local.yml")
	script, err := os.ReadFile(filepath.Join(root, "deployments/images/build.sh"))
	require.NoError(t, err)

	for name := range local.Services {
		require.Contains(t, main.Services, name, "the override names a service the compose file does not have")
	}
	for name := range main.Services {
		svc, ok := local.Services[name]
		require.True(t, ok, "service %s keeps its registry image in the local stack", name)
		if name == "grafana" {
			require.Equal(t, []string{"grafana"}, svc.Profiles, "Grafana has no local image: it must stay out of the default profile")
			continue
		}
		require.Empty(t, svc.Profiles, "%s would not start in the local stack", name)
		require.NotEmpty(t, svc.Image, "%s has no local image", name)
		require.True(t, strings.Contains(string(script), "="+svc.Image+"\n"),
			"%s's image %s is not one deployments/images/build.sh builds", name, svc.Image)
	}
}
