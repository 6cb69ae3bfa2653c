package cluster

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestKeyedRunsAKeyInOrderAndOthersBesideIt checks the relay's dispatch of remote events: a key's functions run
// one after the other in the order submitted, a key whose function blocks holds back no other key, and no more
// than max run at once.
func TestKeyedRunsAKeyInOrderAndOthersBesideIt(t *testing.T) {
	k := newKeyed(4)
	release := make(chan struct{})
	var blocked atomic.Int32
	k.submit("slow", func() { blocked.Add(1); <-release })
	var mu sync.Mutex
	got := map[string][]int{}
	var wg sync.WaitGroup
	var now, most atomic.Int32
	for i := range 50 {
		for _, key := range []string{"a", "b", "c", "slow"} {
			wg.Add(1)
			k.submit(key, func() {
				defer wg.Done()
				n := now.Add(1)
				defer now.Add(-1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				mu.Lock()
				got[key] = append(got[key], i)
				mu.Unlock()
			})
		}
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got["a"]) == 50 && len(got["b"]) == 50 && len(got["c"]) == 50
	}, 5*time.Second, time.Millisecond, "a blocked key held the others back")
	mu.Lock()
	require.Empty(t, got["slow"], "a key's next function ran before the one blocking")
	mu.Unlock()
	close(release)
	wg.Wait()
	for key, order := range got {
		for i, v := range order {
			require.Equal(t, i, v, "key %s ran out of order: %v", key, order)
		}
	}
	require.LessOrEqual(t, most.Load()+blocked.Load(), int32(4), "more than max ran at once")
	require.Eventually(t, func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.running == 0 && len(k.queues) == 0
	}, 5*time.Second, time.Millisecond, "goroutines stay after the work is done")
}

// TestKeyedDropsWhatWaitsAtStop checks that stop drops the functions not yet started and refuses new ones,
// while one running finishes.
func TestKeyedDropsWhatWaitsAtStop(t *testing.T) {
	k := newKeyed(1)
	release := make(chan struct{})
	started, done := make(chan struct{}), make(chan struct{})
	var ran atomic.Int32
	k.submit("a", func() { close(started); <-release; close(done) })
	<-started
	for i := range 10 {
		k.submit(fmt.Sprint(i), func() { ran.Add(1) })
	}
	k.stop()
	k.submit("b", func() { ran.Add(1) })
	close(release)
	<-done
	require.Eventually(t, func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.running == 0
	}, 5*time.Second, time.Millisecond)
	require.Zero(t, ran.Load(), "functions waiting at stop, or submitted after it, ran")
}
