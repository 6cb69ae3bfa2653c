// Package events is the in-process domain event bus through which modules talk without importing each other.
//
// Contract: Publish delivers an event synchronously to every subscriber of its exact type, in the order the
// subscribers were registered, on the publisher's goroutine. The first subscriber error stops the delivery
// and is returned to the publisher, wrapped with the subscriber's name. Publishing an event nobody subscribes
// to is not an error. Subscribe and Publish may be called concurrently; a subscriber added while an event is
// being delivered does not see that event.
package events

import (
	"context"
	"fmt"
	"reflect"
	"sync"
)

// Bus dispatches typed events to their subscribers. The zero value is not usable; call NewBus.
type Bus struct {
	mu   sync.RWMutex
	subs map[reflect.Type][]subscriber
}

type subscriber struct {
	name string
	fn   func(context.Context, any) error
}

// NewBus returns an empty bus.
func NewBus() *Bus { return &Bus{subs: map[reflect.Type][]subscriber{}} }

// Subscribe registers fn, named for errors and logs, for every event of type E published on bus.
func Subscribe[E any](bus *Bus, name string, fn func(context.Context, E) error) {
	t := reflect.TypeFor[E]()
	bus.mu.Lock()
	defer bus.mu.Unlock()
	bus.subs[t] = append(bus.subs[t], subscriber{name: name, fn: func(ctx context.Context, e any) error {
		return fn(ctx, e.(E))
	}})
}

// Publish delivers e to the subscribers of its type in registration order and returns the first error.
func Publish[E any](ctx context.Context, bus *Bus, e E) error {
	bus.mu.RLock()
	subs := bus.subs[reflect.TypeFor[E]()]
	bus.mu.RUnlock()
	for _, s := range subs {
		if err := s.fn(ctx, e); err != nil {
			return fmt.Errorf("%T subscriber %s: %w", e, s.name, err)
		}
	}
	return nil
}

type remoteKey struct{}

// WithRemote marks ctx as carrying an event that another replica published. Subscribers use IsRemote to
// apply only local effects (caches, consumers) and leave shared state (database, queues) to the origin.
func WithRemote(ctx context.Context, origin string) context.Context {
	return context.WithValue(ctx, remoteKey{}, origin)
}

// IsRemote reports whether the event being delivered came from another replica.
func IsRemote(ctx context.Context) bool {
	_, ok := ctx.Value(remoteKey{}).(string)
	return ok
}
