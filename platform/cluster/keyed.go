package cluster

import "sync"

// keyed runs functions submitted under a key: those of one key one after the other, in the order submitted;
// those of different keys side by side, on at most max goroutines, which exist only while there is work. One
// key whose function is slow (a tenant whose consumer drains for CONSUMER_DRAIN_TIMEOUT) holds back only the
// functions of that key, until max keys are slow at once.
type keyed struct {
	max int

	mu      sync.Mutex
	queues  map[string][]func() // the functions of each key not yet run; a key is present while it has one running or queued
	ready   []string            // keys with functions queued and none running, in the order they became ready
	running int                 // goroutines
	stopped bool
}

func newKeyed(max int) *keyed {
	return &keyed{max: max, queues: map[string][]func(){}}
}

// submit queues fn under key; after stop it is dropped.
func (k *keyed) submit(key string, fn func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	if q, ok := k.queues[key]; ok {
		k.queues[key] = append(q, fn)
		return
	}
	k.queues[key] = []func(){fn}
	k.ready = append(k.ready, key)
	if k.running < k.max {
		k.running++
		go k.work()
	}
}

// work runs the functions of ready keys until there are none.
func (k *keyed) work() {
	k.mu.Lock()
	for len(k.ready) > 0 && !k.stopped {
		key := k.ready[0]
		k.ready = k.ready[1:]
		fn := k.queues[key][0]
		k.mu.Unlock()
		fn()
		k.mu.Lock()
		if k.stopped {
			break
		}
		if q := k.queues[key][1:]; len(q) > 0 {
			k.queues[key] = q
			k.ready = append(k.ready, key)
		} else {
			delete(k.queues, key)
		}
	}
	k.running--
	k.mu.Unlock()
}

// stop drops the functions not yet started; those running finish.
func (k *keyed) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	k.queues, k.ready = map[string][]func(){}, nil
}
