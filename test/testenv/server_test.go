package testenv

import (
	"fmt"
	"strings"
	"testing"
)

// TestServerOutputKeepsWholeRecentLines fills the in-memory output past its bound: the older half goes, what
// stays starts at a line's beginning, and the lines the log search and the tail see are the newest.
func TestServerOutputKeepsWholeRecentLines(t *testing.T) {
	const limit = 1 << 20 // maxOutput's logic at a size the race detector writes in a moment
	o := &output{limit: limit}
	s := &Server{out: o}
	line := strings.Repeat("x", 1000)
	n := 2 * limit / 1000
	for i := range n {
		fmt.Fprintf(o, "%d %s\n", i, line)
	}
	if o.buf.Len() > limit {
		t.Fatalf("kept %d bytes, more than %d", o.buf.Len(), limit)
	}
	lines := o.lines()
	for _, l := range lines {
		var i int
		if _, err := fmt.Sscanf(l, "%d", &i); err != nil || !strings.HasSuffix(l, " "+line) {
			t.Fatalf("a cut line is kept: %.40q", l)
		}
	}
	if want := fmt.Sprintf("%d %s", n-1, line); lines[len(lines)-1] != want {
		t.Fatalf("last line %.40q, want %.40q", lines[len(lines)-1], want)
	}
	if got := strings.Count(s.Tail(3), "\n"); got != 2 {
		t.Fatalf("Tail(3) has %d newlines", got)
	}
	if got := s.LogLines(fmt.Sprintf("%d %s", n-2, line)); len(got) != 1 {
		t.Fatalf("LogLines found %d lines", len(got))
	}
	if got := (&Server{out: &output{}}).Tail(5); got != "" {
		t.Fatalf("Tail of no output: %q", got)
	}
}
