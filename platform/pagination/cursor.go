// Package pagination implements keyset pagination on (created_at, id), newest first, with cursors that are
// opaque to clients.
package pagination

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Default and maximum page sizes.
const (
	DefaultLimit = 20
	MaxLimit     = 100
)

// Cursor is the position after which the next page starts: rows strictly older than (CreatedAt, ID).
// A cursor with a zero ID means "strictly older than CreatedAt" (an RFC 3339 cursor).
type Cursor struct {
	CreatedAt time.Time
	ID        uuid.UUID
}

// ErrInvalidCursor is returned for a cursor that is neither one this service made nor an RFC 3339 time.
var ErrInvalidCursor = errors.New("invalid cursor")

const cursorVersion = 1

// Encode returns the opaque form of c: base64url of a version byte, the time in microseconds and the id.
func (c Cursor) Encode() string {
	var b [1 + 8 + 16]byte
	b[0] = cursorVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(c.CreatedAt.UnixMicro()))
	copy(b[9:], c.ID[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Decode parses an opaque cursor or an RFC 3339 timestamp. Its time is in years 1 and later, which is what
// PostgreSQL can compare with (it has no year 0); every time a message or tenant can have round-trips.
func Decode(s string) (Cursor, error) {
	if strings.ContainsAny(s, ":") {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil || t.UTC().Year() < 1 {
			return Cursor{}, ErrInvalidCursor
		}
		return Cursor{CreatedAt: t.UTC()}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 25 || b[0] != cursorVersion {
		return Cursor{}, ErrInvalidCursor
	}
	// Negative: before 1970, which a message published straight to RabbitMQ may claim (x-created-at).
	t := time.UnixMicro(int64(binary.BigEndian.Uint64(b[1:9]))).UTC()
	if t.Year() < 1 {
		return Cursor{}, ErrInvalidCursor
	}
	var id uuid.UUID
	copy(id[:], b[9:])
	return Cursor{CreatedAt: t, ID: id}, nil
}

// ParseLimit parses a page size; "" means DefaultLimit.
func ParseLimit(s string) (int, bool) {
	if s == "" {
		return DefaultLimit, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxLimit {
		return 0, false
	}
	return n, true
}

// Page is one page of results.
type Page[T any] struct {
	Data       []T     `json:"data"`
	NextCursor *string `json:"next_cursor" extensions:"x-nullable" example:"AQAGYT8fhmgAAZOlsHwefS-aSxwtPk9aaw"`
	HasMore    bool    `json:"has_more" example:"true"`
}

// NewPage builds a page from rows fetched with limit+1: the extra row only says there is more.
func NewPage[T any](rows []T, limit int, key func(T) Cursor) Page[T] {
	p := Page[T]{Data: rows}
	if p.Data == nil {
		p.Data = []T{}
	}
	if len(rows) > limit {
		p.Data = rows[:limit]
		p.HasMore = true
		next := key(p.Data[limit-1]).Encode()
		p.NextCursor = &next
	}
	return p
}
