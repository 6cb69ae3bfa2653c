// Package devenv finds the checkout the benchmarks run from, names its commit, and reads the env files its
// scripts write (.dev/services.env), for the bench and the broker-cost tool alike.
package devenv

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModuleRoot returns the directory of msgsvc's go.mod at or above the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if raw, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(raw), "module github.com/acme/msgsvc") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("run from inside the msgsvc module (no go.mod of github.com/acme/msgsvc above %s)", dir)
		}
		dir = parent
	}
}

// ReadEnvFile reads KEY=VALUE lines (quotes around the value dropped, # comments skipped).
func ReadEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vals := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && !strings.HasPrefix(k, "#") {
			vals[k] = strings.Trim(v, `"'`)
		}
	}
	return vals, sc.Err()
}

// GitCommit describes the checkout at root (`git describe --always --dirty`), or "unknown".
func GitCommit(root string) string {
	cmd := exec.Command("git", "describe", "--always", "--dirty")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
