package pagination

import (
	"testing"
	"time"

	"github.com/google/uuid"
)

func BenchmarkCursorEncode(b *testing.B) {
	c := Cursor{CreatedAt: time.Now(), ID: uuid.Must(uuid.NewV7())}
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Encode()
	}
}

func BenchmarkCursorDecode(b *testing.B) {
	s := Cursor{CreatedAt: time.Now(), ID: uuid.Must(uuid.NewV7())}.Encode()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(s); err != nil {
			b.Fatal(err)
		}
	}
}
