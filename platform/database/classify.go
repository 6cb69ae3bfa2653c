package database

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Class is what a failed statement says about its cause: the database (Unavailable), the moment (Transient), or
// the data it was given (Data). Only Data may count against a message.
type Class int

const (
	// OK is no error.
	OK Class = iota
	// Data is a failure about the statement's own data: PostgreSQL refused a value (SQLSTATE class 22), a
	// constraint (23, such as a row no partition takes), a limit (54, such as a value too large), or the statement
	// itself (42, 0A, and anything not named below). Trying the same data again fails again: it counts as an
	// attempt against the message, and the delivery limit turns it into a dead letter.
	Data
	// Unavailable is a failure of the database as a whole, not of the statement: no connection (refused, reset,
	// closed, a dial error, io.EOF, driver.ErrBadConn), a deadline that passed (the server may be frozen or
	// cut off), or PostgreSQL saying it cannot serve now: class 08 (connection exception), 53 (insufficient
	// resources: 53100 disk full, 53200 out of memory, 53300 too many connections), 57 (operator intervention:
	// 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, in recovery), 58 (system error),
	// 25006 (read-only transaction: a standby, or default_transaction_read_only), 28 (authorization: a role
	// made NOLOGIN), 3D000 (no such database) and 42501 (privilege revoked). It never counts; the database
	// gate closes until a probe answers.
	Unavailable
	// Transient is a failure of this statement at this moment while the database serves: 40001 serialization
	// failure, 40P01 deadlock, 55P03 lock not available, 55006 object in use, 57014 statement cancelled (a
	// statement_timeout or lock wait), class XX (internal error, data or index corruption: the server's fault,
	// not the message's), or a cancelled context. It never counts; the statement is retried with backoff.
	Transient
)

// String names the class, as metrics and logs show it.
func (c Class) String() string {
	switch c {
	case OK:
		return "ok"
	case Data:
		return "data"
	case Unavailable:
		return "unavailable"
	case Transient:
		return "transient"
	}
	return "unknown"
}

// Counts reports whether a failure of class c counts as an attempt against the message.
func (c Class) Counts() bool { return c == Data }

// Classify tells what err, returned by a statement run through bun over pgx, says about its cause.
//
// An error it does not recognise is Data: it counts against the message. Every outage reproduced against a
// real server (stopped, refusing connections, sessions terminated, role NOLOGIN, read-only, frozen) arrives as
// one of the errors named under Unavailable, so an unknown error is one that the same data keeps causing
// (an encoding pgx refuses, a bug). Were it not counted, such a message would hold its tenant's worker
// forever without a trace; counted, it becomes a dead letter that is visible, measured and replayable. The
// consumer further counts no attempt while the gate says the database is unavailable.
func Classify(err error) Class {
	if err == nil {
		return OK
	}
	// Anything that failed while connecting is about the server, whatever it said (55000 "database is not
	// currently accepting connections", 28000 NOLOGIN, 53300 too many connections, 57P03 starting up).
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return Unavailable
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifyCode(pgErr.Code)
	}
	switch {
	case errors.Is(err, context.Canceled):
		return Transient
	case errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err):
		return Unavailable
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, sql.ErrConnDone), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return Unavailable
	case pgconn.SafeToRetry(err):
		// pgx sent nothing: the failure was the connection's.
		return Unavailable
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return Unavailable
	}
	// pgx reports a connection it found closed or broken by text only ("conn closed", "conn busy").
	if msg := err.Error(); strings.Contains(msg, "conn closed") || strings.Contains(msg, "conn busy") {
		return Unavailable
	}
	return Data
}

// classifyCode classifies a SQLSTATE.
func classifyCode(code string) Class {
	switch code {
	case "25006", "3D000", "42501":
		return Unavailable
	case "40001", "40P01", "55P03", "55006", "57014":
		return Transient
	case "40003": // statement completion unknown: the connection went
		return Unavailable
	}
	if len(code) < 2 {
		return Data
	}
	switch code[:2] {
	case "08", "53", "57", "58", "28":
		return Unavailable
	case "XX":
		return Transient
	}
	return Data
}
