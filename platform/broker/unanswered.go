package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
)

// AnswerTimeout is the longest a call about queues on the administrative connection (a declare, a passive
// declare, a delete) waits for the broker's answer, unless its context ends sooner. The broker answers them in
// milliseconds, or in a few seconds under load; but a classic queue whose process does not answer (busy paging a
// long backlog, or on a frozen node) holds a call about it, and the channel it runs on, until it does: amqp091's
// synchronous methods take no context.
const AnswerTimeout = 10 * time.Second

// unansweredAfter is how long a call must have waited for the broker's answer, when its caller gives up, to count
// as unanswered (the next calls about its queues fail at once until the broker answers it).
const unansweredAfter = time.Second

// ErrUnanswered wraps (with ErrUnavailable) the failure of a call about a queue the broker did not answer
// within AnswerTimeout, or about which an earlier call is still unanswered.
var ErrUnanswered = errors.New("the broker does not answer about the queue")

// unanswered counts, per queue, the calls given up on (awaitAnswer) that the broker has not answered yet.
type unanswered struct {
	mu    sync.Mutex
	calls map[string]int
	since map[string]time.Time
}

// check fails when a call about one of names is still unanswered.
func (u *unanswered) check(names []string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, n := range names {
		if u.calls[n] > 0 {
			return fmt.Errorf("%w: queue %s: %w: an earlier call about it has had no answer for %s", ErrUnavailable, n,
				ErrUnanswered, time.Since(u.since[n]).Round(time.Second))
		}
	}
	return nil
}

func (u *unanswered) add(name string, since time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.calls == nil {
		u.calls, u.since = map[string]int{}, map[string]time.Time{}
	}
	if u.calls[name] == 0 {
		u.since[name] = since
	}
	u.calls[name]++
}

func (u *unanswered) done(name string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.calls[name]--; u.calls[name] <= 0 {
		delete(u.calls, name)
		delete(u.since, name)
	}
}

// Unanswered returns how many queues have a call of the administrative connection that the broker has not
// answered within AnswerTimeout and still has not.
func (c *Conn) Unanswered() int {
	c.waiting.mu.Lock()
	defer c.waiting.mu.Unlock()
	return len(c.waiting.calls)
}

// hurryKey is the context key of WithHurry's channel.
type hurryKey struct{}

// WithHurry returns a context under which a call about a queue (awaitAnswer) gives up on the broker's answer
// sooner once hurry is closed: as soon as it has waited unansweredAfter (then at once), where it would wait up to
// AnswerTimeout. It counts as unanswered then, as after AnswerTimeout: the next calls about its queue fail at once
// until the broker answers it. A call the broker answers in time is not affected. A reconciliation pass runs
// under it, so that a pass asked for meanwhile (a consumer the broker cancelled) does not wait up to AnswerTimeout
// behind one queue that does not answer.
func WithHurry(ctx context.Context, hurry <-chan struct{}) context.Context {
	return context.WithValue(ctx, hurryKey{}, hurry)
}

// hurryOf is ctx's WithHurry channel (nil: none, which never fires).
func hurryOf(ctx context.Context) <-chan struct{} {
	h, _ := ctx.Value(hurryKey{}).(<-chan struct{})
	return h
}

// awaitAnswer runs call, one or more synchronous methods on ch about queue, and waits for it until ctx ends or
// AnswerTimeout passes (or sooner once ctx's WithHurry channel is closed). A call given up on keeps running: ch is
// closed only once the broker answered it (or its connection closed). When it had waited unansweredAfter or
// more, every other call about the same queue fails at once until then, so that one queue that does not answer
// holds one channel and one goroutine, not one more per pass or per retry, and never another queue's call.
// abandoned reports that the caller must not use ch again.
func (c *Conn) awaitAnswer(ctx context.Context, queue string, ch *amqp.Channel, call func() error) (abandoned bool, err error) {
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- call() }()
	t := time.NewTimer(AnswerTimeout)
	defer t.Stop()
	var (
		why     string
		hurry   = hurryOf(ctx)
		hurried bool
	)
wait:
	for {
		select {
		case err := <-done:
			return false, err
		case <-t.C:
			why = fmt.Sprintf("no answer within %s", AnswerTimeout)
			if hurried {
				why = fmt.Sprintf("no answer within %s, given up on early for work asked for meanwhile",
					time.Since(start).Round(time.Millisecond))
			}
			break wait
		case <-ctx.Done():
			why = fmt.Sprintf("no answer before the caller gave up (%v)", ctx.Err())
			break wait
		case <-hurry:
			// Give up once the call has waited unansweredAfter: it counts as unanswered then, as after AnswerTimeout.
			hurry, hurried = nil, true
			t.Reset(max(0, unansweredAfter-time.Since(start)))
		}
	}
	// A caller that gave up early (a start that stops probing its queue once it returns, a shutdown cancelling a
	// pass in the middle of a declare) says nothing of the broker: only a call that waited unansweredAfter or
	// more is worth a warning, and refuses the next calls about its queue. Refusing them after an early give-up
	// failed the deletion of a tenant's queue whose consumer was starting at that moment, and left the queue.
	counted := time.Since(start) >= unansweredAfter
	lvl := zap.DebugLevel
	msg := "a call about a queue given up on early; it is left to finish on its channel"
	if counted {
		c.waiting.add(queue, start)
		lvl = zap.WarnLevel
		msg = "the broker does not answer a call about a queue; calls about it fail until it does"
	}
	c.log.Log(lvl, msg, zap.String("queues", queue), zap.String("why", why))
	go func() {
		err := <-done
		if counted {
			c.waiting.done(queue)
		}
		_ = ch.Close()
		c.log.Log(lvl, "the broker answered a call about a queue given up on", zap.String("queues", queue),
			zap.Duration("after", time.Since(start)), zap.Error(err))
	}()
	return true, fmt.Errorf("%w: queue %s: %w: %s", ErrUnavailable, queue, ErrUnanswered, why)
}
