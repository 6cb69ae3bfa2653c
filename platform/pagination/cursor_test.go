package pagination

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

func TestCursorRoundTrip(t *testing.T) {
	c := Cursor{CreatedAt: time.Date(2026, 11, 27, 10, 0, 0, 123456000, time.UTC), ID: uuid.Must(uuid.NewV7())}
	got, err := Decode(c.Encode())
	require.NoError(t, err)
	require.Equal(t, c, got)
}

func TestRFC3339Cursor(t *testing.T) {
	got, err := Decode("2026-11-27T10:00:00Z")
	require.NoError(t, err)
	require.Equal(t, time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC), got.CreatedAt)
	require.Equal(t, uuid.Nil, got.ID)
}

func TestInvalidCursors(t *testing.T) {
	for _, s := range []string{"x", "!!!", "2026-13-01T00:00:00Z", Cursor{}.Encode()[:10], "AAAA"} {
		_, err := Decode(s)
		require.ErrorIs(t, err, ErrInvalidCursor, s)
	}
}

func TestParseLimit(t *testing.T) {
	for s, want := range map[string]int{"": 20, "1": 1, "100": 100} {
		n, ok := ParseLimit(s)
		require.True(t, ok)
		require.Equal(t, want, n)
	}
	for _, s := range []string{"0", "101", "-1", "ten", "1.5"} {
		_, ok := ParseLimit(s)
		require.False(t, ok, s)
	}
}

func TestNewPage(t *testing.T) {
	key := func(n int) Cursor { return Cursor{CreatedAt: time.UnixMicro(int64(n))} }
	p := NewPage([]int{5, 4, 3}, 2, key)
	require.Equal(t, []int{5, 4}, p.Data)
	require.True(t, p.HasMore)
	require.NotNil(t, p.NextCursor)
	last := NewPage([]int{2}, 2, key)
	require.False(t, last.HasMore)
	require.Nil(t, last.NextCursor)
	require.Equal(t, []int{}, NewPage[int](nil, 2, key).Data)
}
