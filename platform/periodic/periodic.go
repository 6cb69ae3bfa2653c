// Package periodic runs a job in the background at a fixed interval until it is stopped, as the
// reconciliation loops do.
package periodic

import (
	"context"
	"time"
)

// Loop runs a job every interval. Start it with Start; Stop it once.
type Loop struct {
	stop chan struct{}
	done chan struct{}
}

// Start runs job every interval, each run bounded by a context that ends after interval; a run's error goes to
// onErr. The first run is one interval after Start.
func Start(interval time.Duration, job func(context.Context) error, onErr func(error)) *Loop {
	l := &Loop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), interval)
				if err := job(ctx); err != nil {
					onErr(err)
				}
				cancel()
			}
		}
	}()
	return l
}

// Stop ends the loop and waits for a run in progress. Stopping a nil Loop does nothing.
func (l *Loop) Stop() {
	if l == nil {
		return
	}
	close(l.stop)
	<-l.done
}
