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
// processes just take more CPU time for the same work. The probe's work is the same each time, in two kinds timed
// apart: pointer chasing through 4 MiB, so that it feels the caches and the memory as the servers do, and
// arithmetic on registers, which feels the core itself (its clock, and another guest's thread on the same core's
// other hyperthread, which leaves a chase waiting on memory almost as fast). Each is timed in its own thread's CPU
// time, so waiting for a CPU on a busy machine does not count. It costs about 1.5 % of one core.
type hostProbe struct {
	mu      sync.Mutex
	samples []probeSample
	stop    chan struct{}
	done    chan struct{}
}

type probeSample struct {
	at      time.Time
	ns      float64 // CPU time of one round of the pointer chasing
	compute float64 // CPU time of one round of the arithmetic
}

// probeSteps is one round of the pointer chasing: about 1.6 ms here (2.6 GHz Xeon; a step is a load from memory).
const probeSteps = 10_000

// computeSteps is one round of the arithmetic: about 1 ms here (a step is a few dependent integer operations).
const computeSteps = 500_000

// computeSink keeps the arithmetic's result, so that it is not optimised away.
var computeSink uint64

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
			x := uint64(at) | 1
			for range computeSteps { // xorshift64
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
			}
			computeSink = x
			var c unix.Timespec
			if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &c) != nil {
				return
			}
			p.mu.Lock()
			p.samples = append(p.samples, probeSample{at: time.Now(), ns: float64(b.Nano() - a.Nano()), compute: float64(c.Nano() - b.Nano())})
			p.mu.Unlock()
		}
	}()
	return p
}

// between returns, of the rounds that ended within [from, to], the median CPU times of the pointer chasing (mem)
// and of the arithmetic (compute), 0 when none did, and their whole CPU time in milliseconds (spent: the probe's
// own cost, to take out of this process's CPU over that time).
func (p *hostProbe) between(from, to time.Time) (mem, compute, spent float64) {
	p.mu.Lock()
	var ns, cs []float64
	for _, s := range p.samples {
		if !s.at.Before(from) && !s.at.After(to) {
			ns, cs = append(ns, s.ns), append(cs, s.compute)
			spent += s.ns + s.compute
		}
	}
	p.mu.Unlock()
	if len(ns) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ns)
	slices.Sort(cs)
	return ns[len(ns)/2], cs[len(cs)/2], spent / 1e6
}

func (p *hostProbe) close() {
	close(p.stop)
	<-p.done
}
