// Package gcfloor gives the Go garbage collector a heap floor: while little is live, the heap may grow to what is
// live plus the floor before a collection, instead of to about twice what is live.
//
// Under load the service allocates about 8 kB per message (HTTP request, envelope, deliveries, insert) while a few
// megabytes are live (10 tenants). With Go's default (GOGC=100) that is a collection every thousand messages or
// so, and the collector took about a tenth of the service's CPU (test/bench/README.md, "A heap floor for the
// garbage collector"). With a floor of 64 MiB a collection comes every eight thousand or so. Once the collector
// scans more than the floor (live heap, goroutine stacks and globals: thousands of tenants), the heap goal is Go's
// default again, about twice what is live, so memory per idle tenant does not change. The floor costs at most its size in resident memory while collections come at
// least every 30 s, and nothing once they come less often (an idle service); GOMEMLIMIT still bounds the heap
// when set.
//
// How: after each collection (a finalizer that arms itself again), GOGC is set so that the next heap goal is what
// is live plus the floor, never below 100, Go's default. An operator's own GOGC wins: the module leaves the
// collector alone when the GOGC environment variable is set.
package gcfloor

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/config"
)

// heapMinimum is Go's smallest heap goal at GOGC=100; it scales with GOGC (runtime/mgcpacer.go), so a GOGC that
// puts live + floor within it sets the goal on its own.
const heapMinimum = 4 << 20

// Percent returns the GOGC that makes the heap goal after a collection live + floor. Go sets that goal to
// live + (live + stacks + globals) × GOGC/100, and to at least heapMinimum × GOGC/100; the answer is never below
// Go's default, 100.
func Percent(floor, live, stacks, globals uint64) int {
	limit := (live + floor) * 100 / heapMinimum // the heap minimum alone stays within live + floor
	p := limit
	if scanned := live + stacks + globals; scanned > 0 {
		p = min(p, (floor*100+scanned-1)/scanned) // rounded up: the goal reaches the floor
	}
	return int(max(p, 100))
}

// The process has one collector: every Start shares this state, the floor of the latest applies, and the last
// Stop gives GOGC back as it was before the first Start (tests run several applications in one process).
var state struct {
	mu       sync.Mutex
	users    int
	floor    uint64
	original int
	gen      uint64 // a new one at each first Start: the finalizers of an earlier one stop arming themselves
	cycles   uint64 // collections counted at the last adjustment
	at       time.Time
}

// idleAfter is the interval between collections past which the floor is given up until they come faster: an idle
// process allocates too little for the collector's work to matter, and goes back to Go's default heap, twice what
// is live (the collection Go forces every two minutes comes at the latest). A variable for the tests.
var idleAfter = 30 * time.Second

// Start keeps a heap floor of floor bytes until the stop it returns is called.
func Start(floor uint64) (stop func()) {
	state.mu.Lock()
	state.floor = floor
	state.users++
	if state.users == 1 {
		state.original = readGOGC()
		state.gen++
		state.cycles, state.at = readUint(gcCycles), time.Now()
		arm(state.gen)
	}
	gen := state.gen
	state.mu.Unlock()
	adjust(gen)
	var once sync.Once
	return func() { once.Do(release) }
}

func release() {
	state.mu.Lock()
	defer state.mu.Unlock()
	state.users--
	if state.users == 0 {
		debug.SetGCPercent(state.original)
		state.gen++
	}
}

// sentinel is what the finalizer hangs on; its pointer keeps it out of the tiny allocator, whose blocks are freed
// together and may never be.
type sentinel struct {
	gen *uint64
	_   [16]byte
}

// arm runs adjust after the next collection, and again after each one until generation gen ends.
func arm(gen uint64) {
	s := &sentinel{gen: &gen}
	runtime.SetFinalizer(s, func(s *sentinel) {
		if adjust(*s.gen) {
			arm(*s.gen)
		}
	})
}

// adjust sets GOGC for the floor from what the last collection left live, or back to what it was before the
// first Start while collections come less often than every idleAfter; it reports whether generation gen still
// runs.
func adjust(gen uint64) bool {
	state.mu.Lock()
	defer state.mu.Unlock()
	if state.users == 0 || state.gen != gen {
		return false
	}
	now := time.Now()
	v := read(gcCycles, gogc, liveHeap, stackScan, globalScan) // one read for all: adjust runs at every collection
	cycles, current := v[0], int(v[1])
	idle := cycles > state.cycles && now.Sub(state.at) > idleAfter*time.Duration(cycles-state.cycles)
	if cycles > state.cycles {
		state.cycles, state.at = cycles, now
	}
	p := state.original
	if !idle {
		p = max(p, Percent(state.floor, v[2], v[3], v[4]))
	}
	// The goal is never left short of live + floor (at a small live heap it is the heap minimum, 4 MiB × GOGC/100,
	// so a GOGC a few % low leaves it a few % under the floor); a drop under 5 % is left, since the goal moves
	// with what is live at every collection anyway.
	if d := p - current; d > 0 || -d > current/20 || idle && p != current {
		debug.SetGCPercent(p)
	}
	return true
}

const (
	liveHeap   = "/gc/heap/live:bytes"
	stackScan  = "/gc/scan/stack:bytes"
	globalScan = "/gc/scan/globals:bytes"
	gogc       = "/gc/gogc:percent"
	gcCycles   = "/gc/cycles/total:gc-cycles"
)

// read returns the runtime metrics of names, in their order (0 for one the runtime does not have).
func read(names ...string) []uint64 {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	v := make([]uint64, len(s))
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	return v
}

func readUint(name string) uint64 { return read(name)[0] }

func readGOGC() int { return int(readUint(gogc)) }

// Module applies GC_HEAP_FLOOR_BYTES while the application runs, unless it is 0 or GOGC is set.
var Module = fx.Module("gcfloor", fx.Invoke(func(lc fx.Lifecycle, c config.Config, log *zap.Logger) {
	switch {
	case c.GCHeapFloorBytes == 0:
		return
	case os.Getenv("GOGC") != "":
		log.Info("GOGC is set: GC_HEAP_FLOOR_BYTES is not applied", zap.String("gogc", os.Getenv("GOGC")))
		return
	}
	var stop func()
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error { stop = Start(uint64(c.GCHeapFloorBytes)); return nil },
		OnStop:  func(context.Context) error { stop(); return nil },
	})
}))
