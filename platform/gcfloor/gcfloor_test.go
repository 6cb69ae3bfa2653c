package gcfloor

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name                         string
		floor, live, stacks, globals uint64
		want                         int
	}{
		{"little live: the goal is live + floor", 64 * mib, 4 * mib, 512 << 10, 512 << 10, 1280},
		{"rounded up, so the goal reaches the floor", 64 * mib, 7 * mib, 0, 0, 915},
		{"live at half the floor: twice the default", 64 * mib, 32 * mib, 0, 0, 200},
		{"live above the floor: Go's default", 64 * mib, 200 * mib, 4 * mib, mib, 100},
		{"nothing scanned yet: Go's heap minimum makes the goal", 64 * mib, 0, 0, 0, 1600},
		{"a tiny heap: Go's heap minimum makes the goal", 64 * mib, 2 * mib, 0, 0, 1650},
		{"a larger floor", 1024 * mib, 24 * mib, 4 * mib, 4 * mib, 3200},
	} {
		if got := Percent(c.floor, c.live, c.stacks, c.globals); got != c.want {
			t.Errorf("%s: Percent = %d, want %d", c.name, got, c.want)
		}
	}
}

var sink []byte

// collections allocates total bytes of garbage in 8 kB pieces, about what a message costs the service, and
// returns how many collections ran meanwhile.
func collections(total int) uint32 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for n := 0; n < total; n += 8 << 10 {
		sink = make([]byte, 8<<10)
	}
	runtime.ReadMemStats(&after)
	return after.NumGC - before.NumGC
}

func TestFloorSpacesCollectionsWhileLittleIsLive(t *testing.T) {
	const floor = 64 << 20
	const garbage = 512 << 20
	runtime.GC()
	without := collections(garbage)

	stop := Start(floor)
	defer stop()
	runtime.GC() // the first adjustment after a collection
	with := collections(garbage)
	// 512 MiB of garbage over a floor of 64 MiB: about 8 collections; Go's default runs one per few MiB.
	if with > garbage/floor+4 {
		t.Errorf("%d collections for %d MiB of garbage with a floor of %d MiB, want at most %d", with, garbage>>20,
			floor>>20, garbage/floor+4)
	}
	if without < 4*with {
		t.Errorf("%d collections without the floor against %d with it: want at least 4 times as many", without, with)
	}
	// The goal is what is live plus the floor, not more, once the collection's finalizers ran. The adjustment runs
	// on the finalizer goroutine, which a loaded machine (-race, packages side by side) can run late: a goal left
	// from the collection before (50 MiB, failed twice in CI) is given more collections and time, not taken as
	// the floor's.
	runtime.GC()
	var live, goal uint64
	for i := range 300 {
		live, goal = readUint(liveHeap), readUint("/gc/heap/goal:bytes")
		if goal >= floor && goal <= live+floor+floor/4 {
			return
		}
		if i%50 == 49 {
			runtime.GC()
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("heap goal %d MiB with %d MiB live and a floor of %d MiB", goal>>20, live>>20, floor>>20)
}

func TestLiveHeapAboveTheFloorKeepsGosDefault(t *testing.T) {
	before := readGOGC()
	live := make([]byte, 32<<20)
	stop := Start(8 << 20)
	runtime.GC()
	collections(16 << 20)
	if got := readGOGC(); got != before {
		t.Errorf("GOGC %d with 32 MiB live and a floor of 8 MiB, want %d", got, before)
	}
	stop()
	runtime.KeepAlive(live)
}

func TestTheLastStopGivesGOGCBack(t *testing.T) {
	before := debug.SetGCPercent(150)
	defer debug.SetGCPercent(before)
	runtime.GC()
	stop1 := Start(64 << 20)
	stop2 := Start(64 << 20) // a second application in the process
	runtime.GC()
	runtime.GC()
	if got := readGOGC(); got <= 150 {
		t.Fatalf("GOGC %d while the floor applies with a few MiB live, want above 150", got)
	}
	stop1()
	stop1() // twice is once
	runtime.GC()
	runtime.GC()
	if got := readGOGC(); got <= 150 {
		t.Fatalf("GOGC %d after one of two stops, want the floor still applied", got)
	}
	stop2()
	if got := readGOGC(); got != 150 {
		t.Fatalf("GOGC %d after the last stop, want 150 as before", got)
	}
	runtime.GC()
	runtime.GC() // the finalizers of the stopped floor change nothing any more
	if got := readGOGC(); got != 150 {
		t.Fatalf("GOGC %d after collections following the last stop, want 150", got)
	}
}

func TestAnIdleProcessGoesBackToGosDefault(t *testing.T) {
	defer func(d time.Duration) { idleAfter = d }(idleAfter)
	idleAfter = 200 * time.Millisecond
	before := readGOGC()
	stop := Start(64 << 20)
	defer stop()
	gogcBecomes := func(want func(int) bool, what string) {
		t.Helper()
		for range 100 {
			if want(readGOGC()) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("GOGC %d, want %s", readGOGC(), what)
	}
	runtime.GC()
	runtime.GC() // collections in quick succession: the floor applies
	gogcBecomes(func(p int) bool { return p > before }, "above Go's default under load")
	time.Sleep(3 * idleAfter)
	runtime.GC() // the first collection in a long while
	gogcBecomes(func(p int) bool { return p == before }, "Go's default once idle")
	runtime.GC()
	runtime.GC()
	gogcBecomes(func(p int) bool { return p > before }, "the floor again once collections come fast")
}
