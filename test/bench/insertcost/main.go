// Command insertcost measures what PostgreSQL's CPU costs per stored message for the consumers' grouped
// insert, with and without ON CONFLICT DO NOTHING, at several rows per statement: the statements themselves of
// modules/messaging's storeBatcher (messaging.InsertManySQL, InsertManyPlainSQL), and the same rows by COPY (pgx's
// CopyFrom, binary; tried for the grouped insert on 2026-12-07 and not kept: it costs PostgreSQL more per row than
// the plain insert), into a table shaped as migrations/0001
// makes messages (partitioned by tenant, primary key and keyset index), one partition per tenant, rows spread
// over the tenants as a grouped insert carries them.
//
//	go run ./test/bench/insertcost                      # the local server of .dev/services.env
//	go run ./test/bench/insertcost -rows 4,14,50 -rounds 5
//
// It reads the CPU time of its own PostgreSQL backend (/proc/<pid>/stat), so the server must run on this
// machine; the figures are per row, CPU time, not wall time, and so hold on a busy machine better than
// rates do. It works in a database of its own (msgsvc_insertcost), dropped at the end.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/test/bench/devenv"
)

func main() {
	dbURL := flag.String("database-url", "", "a PostgreSQL URL on this machine (default: DATABASE_URL of .dev/services.env)")
	rowsFlag := flag.String("rows", "4,14,50", "rows per statement, comma separated")
	messages := flag.Int("messages", 30000, "rows inserted per variant and round")
	tenants := flag.Int("tenants", 10, "partitions the rows are spread over")
	rounds := flag.Int("rounds", 3, "rounds; the variants take turns within each")
	size := flag.Int("payload", 512, "payload bytes")
	flag.Parse()
	if err := run(*dbURL, *rowsFlag, *messages, *tenants, *rounds, *size); err != nil {
		fmt.Fprintln(os.Stderr, "insertcost:", err)
		os.Exit(1)
	}
}

func run(dbURL, rowsFlag string, messages, tenants, rounds, size int) error {
	ctx := context.Background()
	if dbURL == "" {
		root, err := devenv.ModuleRoot()
		if err != nil {
			return err
		}
		vals, err := devenv.ReadEnvFile(filepath.Join(root, ".dev", "services.env"))
		if err != nil {
			return fmt.Errorf("no -database-url and no .dev/services.env (start deployments/local/services.sh up): %w", err)
		}
		dbURL = vals["DATABASE_URL"]
	}
	admin, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	const db = "msgsvc_insertcost"
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return err
	}
	defer func() { _, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") }()
	u, err := url.Parse(dbURL)
	if err != nil {
		return err
	}
	u.Path = "/" + db
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)

	ids := make([]uuid.UUID, tenants)
	ddl := []string{
		`CREATE TABLE messages (id uuid NOT NULL, tenant_id uuid NOT NULL, payload jsonb NOT NULL,
		 created_at timestamptz NOT NULL, stored_at timestamptz NOT NULL DEFAULT now(),
		 PRIMARY KEY (tenant_id, id)) PARTITION BY LIST (tenant_id)`,
		`CREATE INDEX messages_keyset_idx ON messages (tenant_id, created_at DESC, id DESC)`,
	}
	for i := range ids {
		ids[i] = uuid.New()
		ddl = append(ddl, fmt.Sprintf(`CREATE TABLE p%d PARTITION OF messages FOR VALUES IN ('%s')`, i, ids[i]))
	}
	for _, s := range ddl {
		if _, err := conn.Exec(ctx, s); err != nil {
			return err
		}
	}
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		return err
	}
	payload := []byte(`{"data":"` + strings.Repeat("x", max(size-20, 0)) + `","n":1}`)
	variants := []struct{ name, sql string }{{"ON CONFLICT DO NOTHING", messaging.InsertManySQL}, {"plain", messaging.InsertManyPlainSQL}, {"copy", "COPY"}}
	fmt.Printf("PostgreSQL CPU per row (ms), %d rows per variant and round, %d partitions, %d-byte payloads\n", messages, tenants, len(payload))
	fmt.Printf("%-6s %-24s %s\n", "rows", "variant", "rounds")
	for _, f := range strings.Split(rowsFlag, ",") {
		per, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || per < 1 {
			return fmt.Errorf("-rows: %q", f)
		}
		res := make([][]string, len(variants))
		for range rounds {
			for v, variant := range variants {
				c0, err := cpu(pid)
				if err != nil {
					return err
				}
				for n := 0; n < messages; n += per {
					// The parameters' Go types are the service's (messaging's rowArrays): pgx sends them in the same
					// binary form. Message ids are UUIDv7, as the service makes them (random ones measured the same
					// here: 2026-12-06, 14 and 50 rows, three pairs).
					ts, is, ps, cs := make([][16]byte, per), make([][16]byte, per), make([][]byte, per), make([]time.Time, per)
					for j := range per {
						ts[j], is[j], ps[j] = ids[(n+j)%tenants], uuid.Must(uuid.NewV7()), payload
						cs[j] = time.Now().UTC().Truncate(time.Microsecond)
					}
					if variant.sql == "COPY" {
						src := make([][]any, per)
						for j := range per {
							src[j] = []any{is[j], ts[j], ps[j], cs[j]}
						}
						if _, err := conn.CopyFrom(ctx, pgx.Identifier{"messages"}, []string{"id", "tenant_id", "payload", "created_at"}, pgx.CopyFromRows(src)); err != nil {
							return err
						}
						continue
					}
					rows, err := conn.Query(ctx, variant.sql, ts, is, ps, cs)
					if err != nil {
						return err
					}
					rows.Close()
					if err := rows.Err(); err != nil {
						return err
					}
				}
				c1, err := cpu(pid)
				if err != nil {
					return err
				}
				res[v] = append(res[v], fmt.Sprintf("%.4f", (c1-c0)*1000/float64(messages)))
			}
		}
		for v, variant := range variants {
			fmt.Printf("%-6d %-24s %s\n", per, variant.name, strings.Join(res[v], "  "))
		}
	}
	return nil
}

// cpu returns the CPU seconds process pid used so far (user and system).
func cpu(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read the backend's CPU time (is PostgreSQL on this machine?): %w", err)
	}
	f := strings.Fields(string(b)[strings.LastIndex(string(b), ")")+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100, nil
}
