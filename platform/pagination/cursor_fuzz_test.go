package pagination

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// FuzzDecode feeds arbitrary strings to the cursor parser: it never panics, refuses with ErrInvalidCursor, or
// returns a position PostgreSQL can compare with (year 1 or later, UTC) that encodes to a cursor decoding to
// the same position.
func FuzzDecode(f *testing.F) {
	id := uuid.MustParse("0193a5b0-9d3e-7f10-8c2b-3d4e5f6a7b8c")
	for _, c := range []Cursor{
		{CreatedAt: time.Date(2026, 11, 27, 10, 0, 0, 123456000, time.UTC), ID: id},
		{CreatedAt: time.Unix(0, 0).UTC()},
		{CreatedAt: time.Date(1969, 12, 31, 23, 59, 59, 999999000, time.UTC), ID: id},
		{CreatedAt: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), ID: id},
	} {
		f.Add(c.Encode())
	}
	for _, s := range []string{
		"", "x", "!!!", "AAAA", ":", "%00", "\x00", "\xff\xfe",
		"2026-11-27T10:00:00Z", "2026-11-27T10:00:00.123456789+02:00", "2026-13-01T00:00:00Z",
		"0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999999-23:59",
		"AX__________________________________", strings.Repeat("A", 34), strings.Repeat("_", 34),
		"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "AQ", strings.Repeat("9", 1000),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Decode(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidCursor) {
				t.Fatalf("Decode(%q): unexpected error %v", s, err)
			}
			return
		}
		if c.CreatedAt.Location() != time.UTC || c.CreatedAt.Year() < 1 {
			t.Fatalf("Decode(%q) = %v: not a UTC time from year 1 on", s, c.CreatedAt)
		}
		again, err := Decode(c.Encode())
		if err != nil {
			t.Fatalf("Decode(%q) = %v, but its encoding %q does not decode: %v", s, c, c.Encode(), err)
		}
		if !again.CreatedAt.Equal(c.CreatedAt.Truncate(time.Microsecond)) || again.ID != c.ID {
			t.Fatalf("Decode(%q) = %v, re-encoded it decodes to %v", s, c, again)
		}
	})
}

// FuzzCursorRoundTrip checks that every position a stored row can have (a time from year 1 on, in
// microseconds, and any id) survives Encode and Decode unchanged.
func FuzzCursorRoundTrip(f *testing.F) {
	f.Add(int64(0), []byte{})
	f.Add(time.Date(2026, 11, 27, 10, 0, 0, 123456000, time.UTC).UnixMicro(), []byte("0123456789abcdef"))
	f.Add(int64(-1), []byte{0xff})
	f.Add(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro(), []byte{1, 2, 3})
	f.Add(int64(1<<63-1), []byte("ffffffffffffffff"))
	f.Fuzz(func(t *testing.T, micros int64, idBytes []byte) {
		at := time.UnixMicro(micros).UTC()
		if at.Year() < 1 {
			t.Skip("PostgreSQL stores no time before year 1")
		}
		var id uuid.UUID
		copy(id[:], idBytes)
		c := Cursor{CreatedAt: at, ID: id}
		got, err := Decode(c.Encode())
		if err != nil {
			t.Fatalf("Decode(Encode(%v)): %v", c, err)
		}
		if !got.CreatedAt.Equal(c.CreatedAt) || got.ID != c.ID {
			t.Fatalf("Decode(Encode(%v)) = %v", c, got)
		}
	})
}
