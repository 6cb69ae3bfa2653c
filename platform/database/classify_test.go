package database

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func TestClassify(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("store 3 messages: %w", &pgconn.PgError{Code: code}) }
	cases := []struct {
		name string
		err  error
		want Class
	}{
		{"nil", nil, OK},
		{"data exception (invalid JSON)", pg("22P02"), Data},
		{"numeric out of range", pg("22003"), Data},
		{"check violation (no partition for the row)", pg("23514"), Data},
		{"not null violation", pg("23502"), Data},
		{"program limit (value too large)", pg("54000"), Data},
		{"undefined table", pg("42P01"), Data},
		{"feature not supported", pg("0A000"), Data},
		{"unknown SQLSTATE", pg("P0001"), Data},
		{"unknown error", errors.New("something unforeseen"), Data},
		{"connection failure", pg("08006"), Unavailable},
		{"connection does not exist", pg("08003"), Unavailable},
		{"disk full", pg("53100"), Unavailable},
		{"out of memory", pg("53200"), Unavailable},
		{"too many connections", pg("53300"), Unavailable},
		{"admin shutdown (pg_terminate_backend)", pg("57P01"), Unavailable},
		{"crash shutdown", pg("57P02"), Unavailable},
		{"cannot connect now (in recovery)", pg("57P03"), Unavailable},
		{"system error (I/O)", pg("58030"), Unavailable},
		{"read-only transaction", pg("25006"), Unavailable},
		{"role cannot log in", pg("28000"), Unavailable},
		{"invalid password", pg("28P01"), Unavailable},
		{"database does not exist", pg("3D000"), Unavailable},
		{"privilege revoked", pg("42501"), Unavailable},
		{"statement completion unknown", pg("40003"), Unavailable},
		{"serialization failure", pg("40001"), Transient},
		{"deadlock", pg("40P01"), Transient},
		{"lock not available", pg("55P03"), Transient},
		{"object in use", pg("55006"), Transient},
		{"statement timeout", pg("57014"), Transient},
		{"internal error", pg("XX000"), Transient},
		{"index corrupted", pg("XX002"), Transient},
		{"connect error, whatever the server said", &pgconn.ConnectError{Config: &pgconn.Config{}}, Unavailable},
		{"connection refused", fmt.Errorf("dial: %w", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), Unavailable},
		{"connection reset", fmt.Errorf("read: %w", syscall.ECONNRESET), Unavailable},
		{"broken pipe", syscall.EPIPE, Unavailable},
		{"io.EOF", fmt.Errorf("receive message: %w", io.EOF), Unavailable},
		{"unexpected EOF", io.ErrUnexpectedEOF, Unavailable},
		{"closed network connection", net.ErrClosed, Unavailable},
		{"driver.ErrBadConn", fmt.Errorf("exec: %w", driver.ErrBadConn), Unavailable},
		{"conn closed (pgx)", errors.New("conn closed"), Unavailable},
		{"deadline exceeded", fmt.Errorf("store: %w", context.DeadlineExceeded), Unavailable},
		{"cancelled", fmt.Errorf("store: %w", context.Canceled), Transient},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.want, Classify(c.err), "%v", c.err)
			require.Equal(t, c.want == Data, Classify(c.err).Counts())
		})
	}
}
