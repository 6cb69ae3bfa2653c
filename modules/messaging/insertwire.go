package messaging

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// The grouped plain insert (InsertManyPlainSQL) is the statement every busy consumer's rows go through. pgx's own
// path encodes its parameters into a buffer that it lets go after each statement once it is larger than 256
// bytes, so a 14-row insert of 512-byte payloads grew a fresh one of its size, by doubling, per statement: about a
// sixth of what the service allocated per message in scenario 1 of test/bench. Here the four arrays are encoded
// in PostgreSQL's binary form into a buffer kept for the next insert, and the statement, prepared once per
// connection under its own name, is run with pgconn.

// insertManyPlainName names InsertManyPlainSQL's prepared statement on the grouped pool's connections.
const insertManyPlainName = "msgsvc_insert_many_plain"

// PostgreSQL's type OIDs of the arrays' elements.
const (
	oidText        = 25
	oidTimestamptz = 1184
	oidUUID        = 2950
)

// postgresEpochMicros is 2000-01-01 00:00 UTC, PostgreSQL's epoch for times, in Unix microseconds.
const postgresEpochMicros = 946684800 * 1000000

// maxKeptParamBytes is the largest parameter buffer kept for the next insert (a grouped insert holds at most
// maxGroupedBytes of payloads).
const maxKeptParamBytes = 2 * maxGroupedBytes

var insertParamsPool = sync.Pool{New: func() any { return new(insertParams) }}

// binaryFormats4 says that the four parameters are in binary form.
var binaryFormats4 = []int16{1, 1, 1, 1}

// insertParams is the encoding of one grouped insert's parameters.
type insertParams struct {
	buf  []byte
	vals [4][]byte
}

// encode returns tenants, a.ids, a.payloads and a.created as the binary values of uuid[], uuid[], text[] and
// timestamptz[]; they share p's buffer until p is used again.
func (p *insertParams) encode(tenants [][16]byte, a rowArrays) [][]byte {
	n := len(tenants)
	size := 4*5*4 + n*(4+16+4+16+4+4+8) // four array headers; per row two uuids, a text and a timestamptz with their lengths
	for _, pl := range a.payloads {
		size += len(pl)
	}
	b := p.buf[:0]
	if cap(b) < size {
		b = make([]byte, 0, size)
	}
	var ends [4]int
	b = appendArrayHeader(b, oidUUID, n)
	for _, id := range tenants {
		b = append(binary.BigEndian.AppendUint32(b, 16), id[:]...)
	}
	ends[0] = len(b)
	b = appendArrayHeader(b, oidUUID, n)
	for _, id := range a.ids {
		b = append(binary.BigEndian.AppendUint32(b, 16), id[:]...)
	}
	ends[1] = len(b)
	b = appendArrayHeader(b, oidText, n)
	for _, pl := range a.payloads {
		b = append(binary.BigEndian.AppendUint32(b, uint32(len(pl))), pl...)
	}
	ends[2] = len(b)
	b = appendArrayHeader(b, oidTimestamptz, n)
	for _, t := range a.created {
		b = binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(b, 8), uint64(timestamptzMicros(t)))
	}
	ends[3] = len(b)
	start := 0
	for i, end := range ends {
		p.vals[i] = b[start:end:end]
		start = end
	}
	if cap(b) <= maxKeptParamBytes {
		p.buf = b
	} else {
		p.buf = nil
	}
	return p.vals[:]
}

// appendArrayHeader appends the header of a one-dimensional array of n elements of type elem, none NULL.
func appendArrayHeader(b []byte, elem uint32, n int) []byte {
	b = binary.BigEndian.AppendUint32(b, 1) // dimensions
	b = binary.BigEndian.AppendUint32(b, 0) // no NULLs
	b = binary.BigEndian.AppendUint32(b, elem)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	return binary.BigEndian.AppendUint32(b, 1) // lower bound
}

// timestamptzMicros is t as PostgreSQL's timestamptz: microseconds since its epoch, as pgx sends a time.Time.
func timestamptzMicros(t time.Time) int64 {
	return t.Unix()*1000000 + int64(t.Nanosecond())/1000 - postgresEpochMicros
}

// execGroupedPlain runs InsertManyPlainSQL with these rows on a connection of db (the grouped pool) as described
// above. db's driver is pgx's, as every pool of the service opens it (stdlib.OpenDB).
func execGroupedPlain(ctx context.Context, db *sql.DB, tenants [][16]byte, a rowArrays) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("grouped insert: a %T is not a pgx connection", dc)
		}
		pc := c.Conn()
		sd, err := pc.Prepare(ctx, insertManyPlainName, InsertManyPlainSQL)
		if err != nil {
			return err
		}
		p := insertParamsPool.Get().(*insertParams)
		defer insertParamsPool.Put(p)
		_, err = pc.PgConn().ExecPrepared(ctx, sd.Name, p.encode(tenants, a), binaryFormats4, nil).Close()
		return err
	})
}
