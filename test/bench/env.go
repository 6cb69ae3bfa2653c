package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/platform/broker"

	"github.com/acme/msgsvc/test/bench/devenv"
)

// services are the local PostgreSQL and RabbitMQ servers started by `services:up`, read from .dev/services.env.
type services struct {
	DatabaseURL   string // superuser connection to the msgsvc database (administrative use only)
	AMQPURL       string // default virtual host; never used directly
	ManagementURL string // RabbitMQ management API with credentials
}

func readServicesEnv(root string) (services, error) {
	path := filepath.Join(root, ".dev", "services.env")
	vals, err := devenv.ReadEnvFile(path)
	if err != nil {
		return services{}, fmt.Errorf("%w (run `go tool task services:up`)", err)
	}
	s := services{DatabaseURL: vals["DATABASE_URL"], AMQPURL: vals["AMQP_URL"], ManagementURL: vals["RABBITMQ_MANAGEMENT_URL"]}
	if s.DatabaseURL == "" || s.AMQPURL == "" || s.ManagementURL == "" {
		return s, fmt.Errorf("%s lacks DATABASE_URL, AMQP_URL or RABBITMQ_MANAGEMENT_URL", path)
	}
	return s, nil
}

// benchEnv is one scenario's own database and virtual host, so the benchmark never touches dev data and
// scenarios never see each other's tenants, queues or rows.
type benchEnv struct {
	DBName      string
	DatabaseURL string
	VHost       string
	AMQPURL     string
	pool        *pgxpool.Pool

	dbDropped, vhostDropped bool
}

// Names carry the harness pid, so that leftovers of a run that was killed can be recognised and removed.
const (
	dbPrefix    = "msgsvc_bench_"
	vhostPrefix = "msgsvc-bench-"
)

func (r *runner) newEnv(ctx context.Context, scenario int) (*benchEnv, error) {
	e := &benchEnv{
		DBName: fmt.Sprintf("%s%d_s%d", dbPrefix, os.Getpid(), scenario),
		VHost:  fmt.Sprintf("%s%d-s%d", vhostPrefix, os.Getpid(), scenario),
	}
	if _, err := r.admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{e.DBName}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create database %s: %w", e.DBName, err)
	}
	r.envs = append(r.envs, e) // removed after the scenario, whatever happens next
	u, err := url.Parse(r.svc.DatabaseURL)
	if err != nil {
		return nil, err
	}
	u.Path = "/" + e.DBName
	e.DatabaseURL = u.String()

	if err := r.mgmt.CreateVHost(ctx, e.VHost); err != nil {
		return nil, fmt.Errorf("create vhost %s: %w", e.VHost, err)
	}
	if err := r.mgmt.SetPermissions(ctx, e.VHost, r.mgmt.User(), broker.FullPermissions); err != nil {
		return nil, fmt.Errorf("vhost %s permissions: %w", e.VHost, err)
	}
	a, err := url.Parse(r.svc.AMQPURL)
	if err != nil {
		return nil, err
	}
	a.Path = "/" + e.VHost
	a.RawPath = "/" + url.PathEscape(e.VHost)
	e.AMQPURL = a.String()

	cfg, err := pgxpool.ParseConfig(e.DatabaseURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 16
	if e.pool, err = pgxpool.NewWithConfig(context.Background(), cfg); err != nil {
		return nil, err
	}
	return e, nil
}

// dropEnv removes the database and the virtual host (with every queue in it). Safe to call twice.
func (r *runner) dropEnv(e *benchEnv) error {
	if r.opt.keep {
		fmt.Printf("   kept database %s and vhost %s (-keep)\n", e.DBName, e.VHost)
		return nil
	}
	if e.pool != nil {
		e.pool.Close()
		e.pool = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var errs []string
	if !e.dbDropped {
		if _, err := r.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{e.DBName}.Sanitize()+" WITH (FORCE)"); err != nil {
			errs = append(errs, fmt.Sprintf("drop database %s: %v", e.DBName, err))
		} else {
			e.dbDropped = true
		}
	}
	if !e.vhostDropped {
		if err := r.mgmt.DeleteVHost(ctx, e.VHost); err != nil && broker.ManagementStatus(err) != http.StatusNotFound {
			errs = append(errs, fmt.Sprintf("delete vhost %s: %v", e.VHost, err))
		} else {
			e.vhostDropped = true
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// cleanLeftovers drops databases and virtual hosts of earlier runs whose harness process is gone.
func (r *runner) cleanLeftovers(ctx context.Context) {
	alive := func(name, prefix string) bool {
		rest := strings.TrimPrefix(name, prefix)
		pidStr, _, _ := strings.Cut(strings.ReplaceAll(rest, "-", "_"), "_")
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			return true // not ours to judge
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return err == nil && bytes.Contains(cmd, []byte("bench"))
	}
	rows, err := r.admin.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE 'msgsvc\\_bench\\_%'")
	if err == nil {
		names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, n := range names {
			if !alive(n, dbPrefix) {
				fmt.Printf("removing leftover database %s\n", n)
				_, _ = r.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize()+" WITH (FORCE)")
			}
		}
	}
	vhosts, err := r.mgmt.VHosts(ctx)
	if err != nil {
		return
	}
	for _, v := range vhosts {
		if strings.HasPrefix(v.Name, vhostPrefix) && !alive(v.Name, vhostPrefix) {
			fmt.Printf("removing leftover vhost %s\n", v.Name)
			_ = r.mgmt.DeleteVHost(ctx, v.Name)
		}
	}
}

// warnForeignQueues warns about queues of virtual hosts that are not the bench's: left by a test run that was
// killed, or a dev service's tenants. Idle, they still cost RabbitMQ CPU (a quorum queue's Raft ticks), which the
// bench counts in RabbitMQ's CPU per message, more at the service's rate than at the raw pipeline's: 1,000 idle
// quorum queues of a killed test cost 4.8 % of a core here (2026-12-06), and inflated the ratio to the raw
// pipeline.
func (r *runner) warnForeignQueues(ctx context.Context) {
	vhosts, err := r.mgmt.VHosts(ctx)
	if err != nil {
		return
	}
	for _, v := range vhosts {
		if strings.HasPrefix(v.Name, vhostPrefix) {
			continue
		}
		qs, err := r.mgmt.QueueRecords(ctx, v.Name)
		if err != nil || len(qs) == 0 {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: warning: RabbitMQ holds %d queues in virtual host %q, not the bench's; idle, they "+
			"still cost it CPU, counted in its CPU per message (1,000 idle quorum queues: about 5 %% of a core). "+
			"Delete them for figures that compare: rabbitmqctl delete_vhost %q\n", len(qs), v.Name, v.Name)
	}
}

// healthy reports whether PostgreSQL, RabbitMQ's AMQP listener and its management API answer.
func (r *runner) healthy(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.admin.Exec(cctx, "SELECT 1"); err != nil {
		return fmt.Errorf("PostgreSQL: %w", err)
	}
	if _, err := r.mgmt.Overview(cctx); err != nil {
		return fmt.Errorf("RabbitMQ management: %w", err)
	}
	conn, err := amqp.DialConfig(r.svc.AMQPURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return fmt.Errorf("RabbitMQ AMQP: %w", err)
	}
	return conn.Close()
}

// waitHealthy waits until the shared servers answer: other checkouts' fault tests stop and start them.
func (r *runner) waitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	said := false
	for {
		err := r.healthy(ctx)
		if err == nil {
			if said {
				fmt.Println("   servers answer again")
			}
			return nil
		}
		if !said {
			fmt.Printf("   waiting for the servers (%v); is another process stopping them?\n", err)
			said = true
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("servers unavailable for %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
