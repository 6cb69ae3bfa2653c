package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/broker"
)

// fleet is the tenant queues of one virtual host and their consumers.
type fleet struct {
	opt   options
	typ   string
	url   string // the virtual host's AMQP URL
	admin *amqp.Connection

	ids      []uuid.UUID
	conns    []*amqp.Connection // consumer connections, each with up to perConn channels
	perConn  int
	inLast   int          // channels on the last connection
	retries  atomic.Int64 // declares and consumes tried again after a failure
	lastErr  atomic.Value // the last such failure (error string)
	consumed int          // tenants a consumer was started for (an index into ids)
	missing  int          // of them, tenants whose queue was not there (its declare failed)
}

func newFleet(ctx context.Context, opt options, typ, url string) (*fleet, error) {
	f := &fleet{opt: opt, typ: typ, url: url}
	var err error
	if f.admin, err = dial(url, "brokercost-admin"); err != nil {
		return nil, err
	}
	ch, err := f.admin.Channel()
	if err != nil {
		return nil, fmt.Errorf("open a channel: %w", err)
	}
	defer ch.Close()
	// As Runtime.Start: the tenants' direct exchange and the dead-letter exchange.
	for _, ex := range []string{opt.exchange, consumer.DeadLetterExchange(opt.exchange)} {
		if err := ch.ExchangeDeclare(ex, amqp.ExchangeDirect, true, false, false, false, nil); err != nil {
			return nil, fmt.Errorf("declare exchange %s: %w", ex, err)
		}
	}
	return f, nil
}

// dialTimeout bounds a connection's opening: an overloaded node (3.10 with thousands of quorum queues that lost
// their leaders) accepted the socket and then answered connection.open after minutes, if at all.
const dialTimeout = time.Minute

func dial(url, name string) (*amqp.Connection, error) {
	type result struct {
		c   *amqp.Connection
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := amqp.DialConfig(url, amqp.Config{Properties: amqp.Table{"connection_name": name}, Dial: amqp.DefaultDial(5 * time.Second)})
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("connect %s: %w", name, r.err)
		}
		return r.c, nil
	case <-time.After(dialTimeout):
		go func() { // close it if it ever opens
			if r := <-done; r.c != nil {
				_ = r.c.Close()
			}
		}()
		return nil, fmt.Errorf("connect %s: the node did not open the connection within %s", name, dialTimeout)
	}
}

// queueArgs are a tenant queue's arguments as modules/consumer's Runtime.queues makes them.
func (f *fleet) queueArgs(id uuid.UUID) amqp.Table {
	qt := f.typ
	if qt == "classic-v2" {
		qt = "classic"
	}
	args := amqp.Table{
		"x-queue-type":              qt,
		"x-dead-letter-exchange":    consumer.DeadLetterExchange(f.opt.exchange),
		"x-dead-letter-routing-key": id.String(),
		"x-single-active-consumer":  true,
	}
	if qt == "quorum" {
		args["x-delivery-limit"] = int64(max(1000, 10*f.opt.deliveryLimit))
	}
	if f.typ == "classic-v2" {
		args["x-queue-version"] = int64(2)
	}
	return args
}

// deadArgs are the shared dead-letter queue's arguments as modules/consumer's Options.deadQueue makes them.
func (f *fleet) deadArgs() amqp.Table {
	qt := f.typ
	if qt == "classic-v2" {
		qt = "classic"
	}
	args := amqp.Table{"x-queue-type": qt}
	if qt == "quorum" {
		args["x-delivery-limit"] = int64(1_000_000)
	}
	if f.typ == "classic-v2" {
		args["x-queue-version"] = int64(2)
	}
	return args
}

// declare declares tenants until there are n, -declarers at a time, each as Runtime.DeclareTopology does:
// the shared dead-letter queue bound to the dead-letter exchange with the tenant's id, then the tenant's queue
// bound to the exchange with it. A failed declare is tried again (as a client retries a 503) up to 5 times.
func (f *fleet) declare(ctx context.Context, n int) error {
	start := len(f.ids)
	for len(f.ids) < n {
		f.ids = append(f.ids, uuid.New())
	}
	var tick <-chan time.Time
	if f.opt.declareRate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / f.opt.declareRate))
		defer t.Stop()
		tick = t.C
	}
	return fanOut(ctx, f.ids[start:], f.opt.declarers, tick, nil, func() (func(uuid.UUID) error, func()) {
		var ch *amqp.Channel
		work := func(id uuid.UUID) error {
			return f.withRetries(func() (bool, error) {
				if ch == nil || ch.IsClosed() {
					var err error
					if ch, err = f.admin.Channel(); err != nil {
						ch = nil
						return false, fmt.Errorf("open a channel: %w", err)
					}
				}
				return false, f.declareOne(ch, id)
			})
		}
		return work, func() {
			if ch != nil {
				_ = ch.Close()
			}
		}
	})
}

func (f *fleet) declareOne(ch *amqp.Channel, id uuid.UUID) error {
	dead := consumer.DeadQueueName(f.opt.exchange)
	if _, err := ch.QueueDeclare(dead, true, false, false, false, f.deadArgs()); err != nil {
		return fmt.Errorf("declare %s: %w", dead, err)
	}
	if err := ch.QueueBind(dead, id.String(), consumer.DeadLetterExchange(f.opt.exchange), false, nil); err != nil {
		return fmt.Errorf("bind %s: %w", dead, err)
	}
	q := consumer.QueueName(id)
	if _, err := ch.QueueDeclare(q, true, false, false, false, f.queueArgs(id)); err != nil {
		return fmt.Errorf("declare %s: %w", q, err)
	}
	if !f.opt.bindPublish {
		return nil
	}
	if err := ch.QueueBind(q, id.String(), f.opt.exchange, false, nil); err != nil {
		return fmt.Errorf("bind %s: %w", q, err)
	}
	return nil
}

func (f *fleet) retried(err error) {
	f.retries.Add(1)
	if err != nil {
		f.lastErr.Store(err.Error())
	}
}

// consume gives every declared tenant without one a consumer, -consumer-starts at a time: its own channel on a
// shared connection (a new connection when the last one carries perConn channels), basic.qos of workers ×
// prefetch per worker, and basic.consume as go-rabbitmq's consumer does it (manual acks, not exclusive).
func (f *fleet) consume(ctx context.Context) error {
	prefetch := f.opt.workers * f.opt.prefetch
	var mu sync.Mutex // guards conns, inLast and dialErr
	var dialErr error // a failed dial ends the step: the others waiting for a connection fail at once
	lease := func() (*amqp.Connection, error) {
		mu.Lock()
		defer mu.Unlock()
		if dialErr != nil {
			return nil, dialErr
		}
		// A connection the broker closed is replaced, as the service's pool retires it and dials another.
		if len(f.conns) == 0 || f.inLast >= f.perConn || f.conns[len(f.conns)-1].IsClosed() {
			c, err := dial(f.url, fmt.Sprintf("brokercost-consumer-%d", len(f.conns)+1))
			if err != nil {
				dialErr = err
				return nil, err
			}
			if f.perConn == 0 {
				f.perConn = broker.PoolChannelsPerConn(int(c.Config.ChannelMax), f.opt.channelsPer)
			}
			f.conns, f.inLast = append(f.conns, c), 0
		}
		f.inLast++
		return f.conns[len(f.conns)-1], nil
	}
	var missing atomic.Int64
	defer func() { f.missing += int(missing.Load()) }()
	return fanOut(ctx, f.ids[f.consumed:], f.opt.consumers, nil, func() { f.consumed++ }, func() (func(uuid.UUID) error, func()) {
		work := func(id uuid.UUID) error {
			err := f.withRetries(func() (bool, error) {
				c, err := lease()
				if err != nil {
					return true, err
				}
				err = consumeOne(c, id, prefetch)
				return isNotFound(err), err // a queue whose declare failed is not there to consume
			})
			if isNotFound(err) {
				missing.Add(1)
				return nil
			}
			return err
		}
		return work, func() {}
	})
}

// fanOut hands ids to workers goroutines, at most one per tick when tick is not nil, until all are handed out,
// ctx ends or a worker's call failed, and returns the first error (or ctx's). Each goroutine gets its work
// function, and what to run when it is done, from newWorker. handed, when not nil, runs after each id handed out.
func fanOut(ctx context.Context, ids []uuid.UUID, workers int, tick <-chan time.Time, handed func(),
	newWorker func() (work func(uuid.UUID) error, done func())) error {
	queue := make(chan uuid.UUID)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work, done := newWorker()
			defer done()
			for id := range queue {
				if err := work(id); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, id := range ids {
		if tick != nil {
			<-tick
		}
		mu.Lock()
		stop := firstErr != nil
		mu.Unlock()
		if stop || ctx.Err() != nil {
			break
		}
		queue <- id
		if handed != nil {
			handed()
		}
	}
	close(queue)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// withRetries calls try up to 5 times, a second longer apart each time (each retry counted), until it returns
// no error or says its error is final, and returns the last error.
func (f *fleet) withRetries(try func() (final bool, err error)) error {
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			f.retried(err)
			time.Sleep(time.Duration(attempt) * time.Second)
		}
		var final bool
		if final, err = try(); err == nil || final {
			return err
		}
	}
	return err
}

func isNotFound(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == amqp.NotFound
}

func consumeOne(c *amqp.Connection, id uuid.UUID, prefetch int) error {
	ch, err := c.Channel()
	if err != nil {
		return fmt.Errorf("open a consumer channel: %w", err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return fmt.Errorf("basic.qos: %w", err)
	}
	q := consumer.QueueName(id)
	tag := "brokercost/" + q + "/" + uuid.NewString()[:8]
	if _, err := ch.Consume(q, tag, false, false, false, false, nil); err != nil {
		return fmt.Errorf("consume %s: %w", q, err)
	}
	return nil
}

// teardown closes the consumers' connections and deletes every queue and the exchanges, -declarers at a time.
func (f *fleet) teardown(ctx context.Context) error {
	var errs []error
	for _, c := range f.conns {
		if err := c.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
			errs = append(errs, fmt.Errorf("close a consumer connection: %w", err))
		}
	}
	f.conns = nil
	if f.admin == nil || f.admin.IsClosed() {
		var err error
		if f.admin, err = dial(f.url, "brokercost-admin"); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	defer f.admin.Close()
	names := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed int
	for range f.opt.declarers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, err := f.admin.Channel()
			for q := range names {
				if err == nil {
					_, err = ch.QueueDelete(q, false, false, false)
				}
				if err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
					if ch, err = f.admin.Channel(); err != nil {
						continue
					}
				}
			}
			if ch != nil {
				_ = ch.Close()
			}
		}()
	}
	for _, id := range f.ids {
		if ctx.Err() != nil {
			break
		}
		names <- consumer.QueueName(id)
	}
	names <- consumer.DeadQueueName(f.opt.exchange)
	close(names)
	wg.Wait()
	if failed > 0 {
		errs = append(errs, fmt.Errorf("%d queue deletes failed (the virtual host's deletion removes them)", failed))
	}
	return errors.Join(errs...)
}
