package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/acme/msgsvc/platform/pagination"
)

// partitionName mirrors messaging.PartitionName (messages_tenant_<id without dashes>); the harness does not
// import the module, whose code others change, only the pagination package for the cursor format.
func partitionName(id uuid.UUID) string {
	return "messages_tenant_" + strings.ReplaceAll(id.String(), "-", "")
}

// paginationScenario measures the first page and a page near the end of a large partition: with keyset
// pagination both cost the same index descent.
func (r *runner) paginationScenario(ctx context.Context, s *Scenario) error {
	o := r.opt
	env, err := r.newEnv(ctx, 4)
	if err != nil {
		return err
	}
	srv, err := r.startServer(ctx, env, "s4")
	if err != nil {
		return err
	}
	tenant, err := r.createTenant(ctx, srv, "bench-pagination", 1)
	if err != nil {
		return err
	}
	s.param("rows in partition", fmtInt(float64(o.rows)))
	s.param("limit", 20)
	s.param("requests/page", o.pageRequests)

	// Rows go straight into the tenant's partition, one second apart going back from now, with ~100-byte payloads.
	t0 := time.Now()
	base := time.Now().UTC().Truncate(time.Second)
	if _, err := env.pool.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (id, tenant_id, payload, created_at)
		SELECT gen_random_uuid(), $1, jsonb_build_object('seq', g, 'kind', 'bench', 'pad', repeat('x', 64)),
		       $2::timestamptz - make_interval(secs => g)
		FROM generate_series(1, $3::int) g`, pgx.Identifier{partitionName(tenant)}.Sanitize()),
		tenant, base, o.rows); err != nil {
		return fmt.Errorf("seed partition: %w", err)
	}
	// Settle the table as it would be after autovacuum, so that a vacuum does not run during the measurement.
	if _, err := env.pool.Exec(ctx, "VACUUM (ANALYZE) "+pgx.Identifier{partitionName(tenant)}.Sanitize()); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	seed := time.Since(t0)
	fmt.Printf("   seeded %s rows in %s\n", fmtInt(float64(o.rows)), seed.Round(100*time.Millisecond))

	// The cursor of the row 1,000 from the end: the page after it is the last-but-50th page of 20.
	var at time.Time
	var id uuid.UUID
	offset := max(0, o.rows-1000)
	if err := env.pool.QueryRow(ctx, `SELECT created_at, id FROM messages WHERE tenant_id = $1
		ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1`, tenant, offset).Scan(&at, &id); err != nil {
		return fmt.Errorf("deep cursor: %w", err)
	}
	pages := []struct {
		key, name, query string
	}{
		{"first", "first page", ""},
		{"deep", fmt.Sprintf("page after row %s (opaque cursor)", fmtInt(float64(offset+1))),
			"&cursor=" + pagination.Cursor{CreatedAt: at, ID: id}.Encode()},
		{"deep_time", fmt.Sprintf("page after row %s (RFC 3339 cursor)", fmtInt(float64(offset+1))),
			"&cursor=" + url.QueryEscape(at.Format(time.RFC3339Nano))},
	}
	lat := make([][]time.Duration, len(pages))
	get := func(q string) (time.Duration, error) {
		u := srv.URL + "/api/v1/messages?tenant_id=" + tenant.String() + "&limit=20" + q
		t0 := time.Now()
		status, out, err := r.do(ctx, http.MethodGet, u, nil)
		d := time.Since(t0)
		if err != nil {
			return d, err
		}
		if status != http.StatusOK {
			return d, fmt.Errorf("GET %s: HTTP %d: %s", u, status, out)
		}
		var p struct {
			Data    []json.RawMessage
			HasMore bool `json:"has_more"`
		}
		if err := json.Unmarshal(out, &p); err != nil {
			return d, err
		}
		if len(p.Data) != 20 || !p.HasMore {
			return d, fmt.Errorf("GET %s: %d rows, has_more %v; want 20 and more", u, len(p.Data), p.HasMore)
		}
		return d, nil
	}
	// Warm up, then alternate the pages so that both see the same machine noise.
	for range 5 {
		for _, p := range pages {
			if _, err := get(p.query); err != nil {
				return err
			}
		}
	}
	for range o.pageRequests {
		for i, p := range pages {
			d, err := get(p.query)
			if err != nil {
				return err
			}
			lat[i] = append(lat[i], d)
		}
	}
	med := make([]time.Duration, len(pages))
	for i, p := range pages {
		sortDurations(lat[i])
		med[i] = percentile(lat[i], 0.5)
		s.add(p.key, p.name+" median", ms(med[i]), "ms", fmtMS(med[i]))
		s.add(p.key+"_p90", p.name+" p90", ms(percentile(lat[i], 0.9)), "ms", fmtMS(percentile(lat[i], 0.9)))
	}
	ratio := float64(med[1]) / float64(med[0])
	s.add("deep_ratio", "deep page median ÷ first page median", ratio, "×", fmt.Sprintf("%.2f ×", ratio)).atMost(2, "2 ×")
	s.add("seed", "seeding (INSERT … generate_series, VACUUM)", seed.Seconds(), "s", fmtSeconds(seed))
	return nil
}
