package consumer

import (
	"testing"
	"time"
)

func TestJudgeUnservedFlagsOnlyAGenerationThatReceivedNothingForTheWholeInterval(t *testing.T) {
	g, other := &generation{}, &generation{}
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	first := unservedMark{g: g, high: 7, at: t0}
	later := func(d time.Duration, high uint64) unservedMark { return unservedMark{g: g, high: high, at: t0.Add(d)} }
	cases := []struct {
		name     string
		prev     unservedMark
		seen     bool
		cur      unservedMark
		open     bool
		unserved bool
		mark     unservedMark
	}{
		{"first sighting", unservedMark{}, false, first, false, false, first},
		{"too soon: the first sighting is kept", first, true, later(unservedSettle/2, 7), false, false, first},
		{"nothing received, nothing held", first, true, later(unservedSettle, 7), false, true, first},
		{"nothing received but a delivery still held (a slow store)", first, true, later(unservedSettle, 7), true, false, later(unservedSettle, 7)},
		{"deliveries received meanwhile", first, true, later(2*unservedSettle, 9), false, false, later(2*unservedSettle, 9)},
		{"another generation (restarted meanwhile)", first, true, unservedMark{g: other, high: 7, at: t0.Add(time.Hour)}, false, false, unservedMark{g: other, high: 7, at: t0.Add(time.Hour)}},
	}
	for _, c := range cases {
		mark, unserved := judgeUnserved(c.prev, c.seen, c.cur, c.open)
		if unserved != c.unserved || mark != c.mark {
			t.Errorf("%s: got (%v, %v), want (%v, %v)", c.name, mark, unserved, c.mark, c.unserved)
		}
	}
}
