package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/platform/broker"

	"github.com/acme/msgsvc/test/bench/devenv"
)

// node is the RabbitMQ node being measured: the local one of .dev/services.env or a container of its own.
type node struct {
	amqpURL string // the default virtual host's URL
	mgmtURL string // management API base with credentials
	mgmt    *broker.Management
	beam    int // pid of the node's beam.smp, as this machine sees it
	version string
	name    string
	remove  func() // removes the container; nil for the local node
}

// vhostURL is the AMQP URL of virtual host vhost on the node.
func (n *node) vhostURL(vhost string) string {
	u, _ := url.Parse(n.amqpURL)
	u.Path, u.RawPath = "/"+vhost, "/"+url.PathEscape(vhost)
	return u.String()
}

// localNode is the node deployments/local/services.sh runs, as recorded in .dev/services.env.
func localNode(ctx context.Context, root string) (*node, error) {
	vals, err := devenv.ReadEnvFile(filepath.Join(root, ".dev", "services.env"))
	if err != nil {
		return nil, fmt.Errorf("read the local servers' addresses: %w (run `go tool task services:up`)", err)
	}
	n := &node{amqpURL: vals["AMQP_URL"], mgmtURL: vals["RABBITMQ_MANAGEMENT_URL"]}
	if n.amqpURL == "" || n.mgmtURL == "" {
		return nil, errors.New(".dev/services.env lacks AMQP_URL or RABBITMQ_MANAGEMENT_URL")
	}
	raw, err := os.ReadFile(filepath.Join(root, ".dev", "rabbitmq", "rabbit.pid"))
	if err != nil {
		return nil, fmt.Errorf("find the local node's beam.smp: %w", err)
	}
	if n.beam, err = strconv.Atoi(strings.TrimSpace(string(raw))); err != nil || !isBeam(n.beam) {
		return nil, fmt.Errorf("find the local node's beam.smp: pid file %q names no running beam.smp", strings.TrimSpace(string(raw)))
	}
	return n, n.ready(ctx, 30*time.Second)
}

// containerNode starts a container of image with its AMQP and management ports on free loopback ports.
func containerNode(ctx context.Context, image, name string) (*node, error) {
	out, err := exec.CommandContext(ctx, "docker", "run", "-d", "--name", name,
		"-p", "127.0.0.1::5672", "-p", "127.0.0.1::15672", image).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("docker run %s: %w: %s", image, err, bytes.TrimSpace(out))
	}
	n := &node{remove: func() {
		if out, err := exec.Command("docker", "rm", "-f", "-v", name).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "brokercost: docker rm %s: %v: %s\n", name, err, bytes.TrimSpace(out))
		}
	}}
	port := func(p string) (string, error) {
		out, err := exec.CommandContext(ctx, "docker", "port", name, p).Output()
		if err != nil {
			return "", fmt.Errorf("docker port %s %s: %w", name, p, err)
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line, nil
	}
	amqpAddr, err := port("5672/tcp")
	if err != nil {
		return n, err
	}
	mgmtAddr, err := port("15672/tcp")
	if err != nil {
		return n, err
	}
	n.amqpURL = "amqp://guest:guest@" + amqpAddr + "/"
	n.mgmtURL = "http://guest:guest@" + mgmtAddr
	if err := n.ready(ctx, 3*time.Minute); err != nil {
		return n, err
	}
	out, err = exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.State.Pid}}", name).Output()
	if err != nil {
		return n, fmt.Errorf("docker inspect %s: %w", name, err)
	}
	top, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	if n.beam = findBeam(top); n.beam == 0 {
		return n, fmt.Errorf("no beam.smp below the container's process %d", top)
	}
	return n, nil
}

// ready waits until the node answers on AMQP and its management API, and records its name and version.
func (n *node) ready(ctx context.Context, wait time.Duration) error {
	var err error
	if n.mgmt, err = broker.NewManagement(n.mgmtURL, &http.Client{Timeout: 5 * time.Minute}); err != nil {
		return fmt.Errorf("management API: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		var ov broker.Overview
		c, derr := amqp.DialConfig(n.amqpURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
		if derr == nil {
			_ = c.Close()
			octx, cancel := context.WithTimeout(ctx, 10*time.Second)
			ov, err = n.mgmt.Overview(octx)
			cancel()
			if err == nil {
				n.version, n.name = ov.RabbitMQVersion, ov.Node
				return nil
			}
		} else {
			err = derr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("RabbitMQ did not answer within %s: %w", wait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// nodeStats are the management API's figures of the node: what RabbitMQ counts itself, and its limits.
type nodeStats struct {
	MemUsed   float64 `json:"mem_used"`
	MemLimit  float64 `json:"mem_limit"`
	MemAlarm  bool    `json:"mem_alarm"`
	ProcUsed  int     `json:"proc_used"`
	ProcTotal int     `json:"proc_total"`
	FDUsed    int     `json:"fd_used"`
	FDTotal   int     `json:"fd_total"`
}

func (n *node) stats(ctx context.Context) (nodeStats, error) {
	u, err := url.Parse(n.mgmtURL)
	if err != nil {
		return nodeStats{}, err
	}
	user := u.User
	u.User = nil
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(u.String(), "/")+
		"/api/nodes?columns=name,mem_used,mem_limit,mem_alarm,proc_used,proc_total,fd_used,fd_total", nil)
	if err != nil {
		return nodeStats{}, err
	}
	pass, _ := user.Password()
	req.SetBasicAuth(user.Username(), pass)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nodeStats{}, fmt.Errorf("read the node's figures: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nodeStats{}, fmt.Errorf("read the node's figures: HTTP %d", resp.StatusCode)
	}
	var ns []nodeStats
	if err := json.NewDecoder(resp.Body).Decode(&ns); err != nil || len(ns) == 0 {
		return nodeStats{}, fmt.Errorf("read the node's figures: %v (%d nodes)", err, len(ns))
	}
	return ns[0], nil
}

func isBeam(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(comm)), "beam")
}

// findBeam returns the beam process at or below pid (the container's first process execs scripts that start
// the Erlang VM).
func findBeam(pid int) int {
	if pid <= 0 {
		return 0
	}
	if isBeam(pid) {
		return pid
	}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		child, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if s, err := readStat(child); err == nil && s.PPID == pid {
			if b := findBeam(child); b != 0 {
				return b
			}
		}
	}
	return 0
}
