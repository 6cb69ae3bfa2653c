package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Heartbeats runs the membership's statements on one PostgreSQL connection of its own, apart from the
// service's pool: a pool starved by stores (every connection busy, or waiting on a lock) must not keep a
// healthy replica from renewing its lease. It connects when first used and again after any failure. Every call
// takes a context whose deadline bounds the connect and the statement.
//
// It is not safe for concurrent use; Membership calls it from one goroutine at a time.
type Heartbeats struct {
	cfg  *pgx.ConnConfig
	conn *pgx.Conn
}

// NewHeartbeats returns the heartbeat connection to the database at url (DATABASE_URL); it does not connect.
func NewHeartbeats(url string) (*Heartbeats, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("cluster: parse DATABASE_URL for the heartbeat connection: %w", err)
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "msgsvc-heartbeat"
	}
	return &Heartbeats{cfg: cfg}, nil
}

// run runs fn on the connection, connecting first when there is none; after a failure the connection is
// closed, so the next call connects again.
func (h *Heartbeats) run(ctx context.Context, what string, fn func(*pgx.Conn) error) error {
	if h.conn == nil || h.conn.IsClosed() {
		c, err := pgx.ConnectConfig(ctx, h.cfg)
		if err != nil {
			return fmt.Errorf("cluster: %s: connect: %w", what, err)
		}
		h.conn = c
	}
	if err := fn(h.conn); err != nil {
		h.drop()
		return fmt.Errorf("cluster: %s: %w", what, err)
	}
	return nil
}

// drop closes the connection without waiting for the server.
func (h *Heartbeats) drop() {
	if h.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = h.conn.Close(ctx)
	h.conn = nil
}

// Beat upserts replica self's heartbeat and returns, sorted, the replicas whose heartbeat is younger than
// window, self included, in one statement.
func (h *Heartbeats) Beat(ctx context.Context, self string, window time.Duration) ([]string, error) {
	var live []string
	err := h.run(ctx, "heartbeat", func(c *pgx.Conn) error {
		// The CTE's upsert is not visible to the SELECT's snapshot: self comes from its RETURNING.
		rows, err := c.Query(ctx, `WITH beat AS (
				INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now() RETURNING id)
			SELECT id FROM replicas WHERE id <> $1 AND heartbeat_at > now() - $2::bigint * interval '1 microsecond'
			UNION ALL SELECT id FROM beat`, self, window.Microseconds())
		if err != nil {
			return err
		}
		live, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, err
	}
	if !slices.Contains(live, self) {
		return nil, errors.New("cluster: heartbeat: the upsert returned no row")
	}
	slices.Sort(live)
	return live, nil
}

// Remove deletes replica self's row, and the rows of replicas dead for an hour.
func (h *Heartbeats) Remove(ctx context.Context, self string) error {
	return h.run(ctx, "remove this replica's heartbeat", func(c *pgx.Conn) error {
		if _, err := c.Exec(ctx, `DELETE FROM replicas WHERE id = $1`, self); err != nil {
			return err
		}
		_, err := c.Exec(ctx, `DELETE FROM replicas WHERE heartbeat_at < now() - interval '1 hour'`)
		return err
	})
}

// Close closes the connection.
func (h *Heartbeats) Close() { h.drop() }
