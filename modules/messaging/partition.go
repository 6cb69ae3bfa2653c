package messaging

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
)

// PartitionName is the name of a tenant's partition of messages: messages_tenant_<id without dashes>.
func PartitionName(id uuid.UUID) string {
	return "messages_tenant_" + strings.ReplaceAll(id.String(), "-", "")
}

// Identifiers and literals below are built only from a parsed uuid.UUID (hex digits and dashes), and quoted.
func partitionIdent(id uuid.UUID) string { return `"` + PartitionName(id) + `"` }
func tenantLiteral(id uuid.UUID) string  { return "'" + id.String() + "'::uuid" }

// CreatePartition makes the tenant's partition inside tx. The table is created on its own with a CHECK
// constraint matching the partition bound and then attached: ATTACH PARTITION takes a SHARE UPDATE EXCLUSIVE
// lock on messages, which does not block inserts into other tenants' partitions (CREATE TABLE … PARTITION OF
// would block them until tx ends), and the matching constraint spares the validation scan.
func CreatePartition(ctx context.Context, tx bun.IDB, id uuid.UUID) error {
	stmts := []string{
		fmt.Sprintf(`CREATE TABLE %s (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`, partitionIdent(id)),
		fmt.Sprintf(`ALTER TABLE %s ADD CONSTRAINT "%s_bound" CHECK (tenant_id IS NOT NULL AND tenant_id = %s)`,
			partitionIdent(id), PartitionName(id), tenantLiteral(id)),
		fmt.Sprintf(`ALTER TABLE messages ATTACH PARTITION %s FOR VALUES IN (%s)`, partitionIdent(id), tenantLiteral(id)),
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("create partition %s: %w", PartitionName(id), err)
		}
	}
	return nil
}

// detachLockKey is the advisory lock that serialises concurrent detaches across replicas: PostgreSQL allows
// one pending concurrent detach per partitioned table, and two at once can deadlock.
const detachLockKey = 0x6d73676474 // "msgdt"

// detachMu serialises detaches within this process, so that only one connection waits on the advisory lock.
var detachMu sync.Mutex

// DropPartition detaches the tenant's partition concurrently (without blocking inserts into other partitions)
// and drops it. A partition already gone is not an error.
func DropPartition(ctx context.Context, db *bun.DB, id uuid.UUID) error {
	detachMu.Lock()
	defer detachMu.Unlock()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("drop partition %s: %w", PartitionName(id), err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", detachLockKey); err != nil {
		return fmt.Errorf("drop partition %s: lock: %w", PartitionName(id), err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", detachLockKey)
	}()
	if err := detachLocked(ctx, conn, id); err != nil {
		return err
	}
	if _, err := conn.ExecContext(ctx, fmt.Sprintf(`DROP TABLE IF EXISTS %s`, partitionIdent(id))); err != nil {
		return fmt.Errorf("drop partition %s: %w", PartitionName(id), err)
	}
	return nil
}

// detachLocked detaches the tenant's partition from messages, concurrently (without blocking inserts into
// other partitions), or finishes a concurrent detach that was interrupted; a partition detached already or gone
// is left as it is. The caller holds detachMu and the detach advisory lock on conn.
func detachLocked(ctx context.Context, conn bun.IConn, id uuid.UUID) error {
	var attached, exists, pending bool
	err := conn.QueryRowContext(ctx, `SELECT to_regclass(?) IS NOT NULL,
		EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(?) AND inhparent = 'messages'::regclass),
		EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(?) AND inhdetachpending)`,
		PartitionName(id), PartitionName(id), PartitionName(id)).Scan(&exists, &attached, &pending)
	if err != nil {
		return fmt.Errorf("drop partition %s: %w", PartitionName(id), err)
	}
	if !exists {
		return nil
	}
	switch {
	case pending:
		// An interrupted concurrent detach left the partition pending; finish it.
		_, err = conn.ExecContext(ctx, fmt.Sprintf(`ALTER TABLE messages DETACH PARTITION %s FINALIZE`, partitionIdent(id)))
	case attached:
		_, err = conn.ExecContext(ctx, fmt.Sprintf(`ALTER TABLE messages DETACH PARTITION %s CONCURRENTLY`, partitionIdent(id)))
	}
	if err != nil {
		return fmt.Errorf("detach partition %s: %w", PartitionName(id), err)
	}
	return nil
}

// pendingDetaches returns which of ids have a partition that a DETACH … CONCURRENTLY, of an older version,
// left pending detach (interrupted or cancelled between its two transactions).
func pendingDetaches(ctx context.Context, conn bun.IConn, ids []uuid.UUID) (map[uuid.UUID]bool, error) {
	names, byName := partitionNames(ids)
	rows, err := conn.QueryContext(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhdetachpending AND i.inhparent = 'messages'::regclass AND c.relname = ANY(?::text[])`, arrayLiteral(names))
	if err != nil {
		return nil, fmt.Errorf("look for partitions pending detach: %w", err)
	}
	defer rows.Close()
	pending := map[uuid.UUID]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("look for partitions pending detach: %w", err)
		}
		pending[byName[name]] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look for partitions pending detach: %w", err)
	}
	return pending, nil
}

// finishDetach finishes the detach of the tenant's partition, pending detach (pendingDetaches). The caller holds
// detachMu and the detach advisory lock on conn.
func finishDetach(ctx context.Context, conn bun.IConn, id uuid.UUID) error {
	if _, err := conn.ExecContext(ctx, fmt.Sprintf(`ALTER TABLE messages DETACH PARTITION %s FINALIZE`, partitionIdent(id))); err != nil {
		return fmt.Errorf("finish detaching partition %s: %w", PartitionName(id), err)
	}
	return nil
}

// PartitionExists reports whether the tenant's partition is attached to messages.
func PartitionExists(ctx context.Context, db bun.IDB, id uuid.UUID) (bool, error) {
	var ok bool
	err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_inherits
		WHERE inhrelid = to_regclass(?) AND inhparent = 'messages'::regclass)`, PartitionName(id)).Scan(&ok)
	return ok, err
}
