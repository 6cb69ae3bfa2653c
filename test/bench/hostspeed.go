package main

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// hostProbe measures how much CPU time a fixed piece of work takes on this host, a few times a second, so that a
// slow stretch of a run can be told apart from the pipeline's own work. On a shared virtual machine other guests
// slow every process at once (the caches, the memory bandwidth, the clock), and no figure of /proc shows it: the
// processes just take more CPU time for the same work. The probe's work is the same each time (pointer chasing
// through 4 MiB, so that it feels the caches and the memory as the servers do), and it is timed in its own
// thread's CPU time, so waiting for a CPU on a busy machine does not count. It costs about 1 % of one core.
type hostProbe struct {
	mu      sync.Mutex
	samples []probeSample
	stop    chan struct{}
	done    chan struct{}
}

type probeSample struct {
	at time.Time
	ns float64 // CPU time of one round of the work
}

// probeSteps is one round of the work: about 1.6 ms here (2.6 GHz Xeon; a step is a load from memory).
const probeSteps = 10_000

func startHostProbe(every time.Duration) *hostProbe {
	p := &hostProbe{stop: make(chan struct{}), done: make(chan struct{})}
	// A random cycle through 1 Mi entries (4 MiB): every step is a load that depends on the one before.
	next := make([]uint32, 1<<20)
	perm := rand.Perm(len(next))
	for i := range perm {
		next[perm[i]] = uint32(perm[(i+1)%len(perm)])
	}
	go func() {
		defer close(p.done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t := time.NewTicker(every)
		defer t.Stop()
		var at uint32
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			var a, b unix.Timespec
			if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &a) != nil {
				return
			}
			for range probeSteps {
				at = next[at]
			}
			if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &b) != nil {
				return
			}
			p.mu.Lock()
			p.samples = append(p.samples, probeSample{at: time.Now(), ns: float64(b.Nano() - a.Nano())})
			p.mu.Unlock()
		}
	}()
	return p
}

// between returns the median CPU time of the rounds that ended within [from, to], 0 when none did.
func (p *hostProbe) between(from, to time.Time) float64 {
	p.mu.Lock()
	var ns []float64
	for _, s := range p.samples {
		if !s.at.Before(from) && !s.at.After(to) {
			ns = append(ns, s.ns)
		}
	}
	p.mu.Unlock()
	if len(ns) == 0 {
		return 0
	}
	slices.Sort(ns)
	return ns[len(ns)/2]
}

func (p *hostProbe) close() {
	close(p.stop)
	<-p.done
}
