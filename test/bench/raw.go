package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"
)

// rawScenario pushes the same volume straight through RabbitMQ and PostgreSQL, with none of the service's
// code: the ceiling of this machine for the pipeline the service implements. Publishers keep many confirms
// in flight; consumers take what is waiting (up to -raw-batch), COPY it into a plain table and ack after the
// commit.
func (r *runner) rawScenario(ctx context.Context, s *Scenario) error {
	o := r.opt
	env, err := r.newEnv(ctx, 3)
	if err != nil {
		return err
	}
	s.param("queues", fmt.Sprintf("%d quorum", o.tenants))
	s.param("payload", fmt.Sprintf("%d B", o.payload))
	s.param("messages", fmtInt(float64(o.messages)))
	s.param("publishers", fmt.Sprintf("%d × %d in flight", o.rawPublishers, o.rawWindow))
	s.param("consumers", fmt.Sprintf("%d/queue, prefetch %d, COPY ≤ %d rows", o.rawConsumers, o.rawPrefetch, o.rawBatch))

	// A plain table: the primary key is the least an idempotent store needs; no partitions, no other index.
	if _, err := env.pool.Exec(ctx, `CREATE TABLE raw_messages (
		id uuid PRIMARY KEY, tenant_id uuid NOT NULL, payload jsonb NOT NULL,
		created_at timestamptz NOT NULL, stored_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	queues := make([]string, o.tenants)
	tenantOf := make([]uuid.UUID, o.tenants)
	dial := func() (*amqp.Connection, error) {
		return amqp.DialConfig(env.AMQPURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	}
	setup, err := dial()
	if err != nil {
		return err
	}
	defer setup.Close()
	ch, err := setup.Channel()
	if err != nil {
		return err
	}
	for i := range queues {
		queues[i] = fmt.Sprintf("bench.raw.%d", i)
		tenantOf[i] = uuid.New()
		if _, err := ch.QueueDeclare(queues[i], true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
			return fmt.Errorf("declare %s: %w", queues[i], err)
		}
	}

	// Consumers first, one connection per queue with -raw-consumers channels each.
	cctx, stopConsumers := context.WithCancel(ctx)
	defer stopConsumers()
	var stored atomic.Int64
	var consumeErr error
	var errOnce sync.Once
	fail := func(err error) { errOnce.Do(func() { consumeErr = err; stopConsumers() }) }
	var cwg sync.WaitGroup
	for qi, q := range queues {
		conn, err := dial()
		if err != nil {
			return err
		}
		defer conn.Close()
		for range o.rawConsumers {
			ch, err := conn.Channel()
			if err != nil {
				return err
			}
			if err := ch.Qos(o.rawPrefetch, 0, false); err != nil {
				return err
			}
			deliveries, err := ch.ConsumeWithContext(cctx, q, "", false, false, false, false, nil)
			if err != nil {
				return err
			}
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				if err := r.rawConsume(cctx, env, tenantOf[qi], deliveries, &stored); err != nil && cctx.Err() == nil {
					fail(err)
				}
			}()
		}
	}

	defer func() { stopConsumers(); cwg.Wait() }()

	cpu0 := r.snapCPU(0)
	start := time.Now()
	ids := make([]uuid.UUID, o.messages)
	confirmed := make([]bool, o.messages)
	var next atomic.Int64
	var pwg sync.WaitGroup
	var pubErr error
	var pubOnce sync.Once
	for range o.rawPublishers {
		conn, err := dial()
		if err != nil {
			return err
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		if err := ch.Confirm(false); err != nil {
			return err
		}
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			if err := publishPipelined(ctx, ch, o, queues, &next, ids, confirmed); err != nil {
				pubOnce.Do(func() { pubErr = err })
			}
		}()
	}
	pwg.Wait()
	pubEnd := time.Now()
	if pubErr != nil {
		return fmt.Errorf("publish: %w", pubErr)
	}
	var accepted []uuid.UUID
	for i, ok := range confirmed {
		if ok {
			accepted = append(accepted, ids[i])
		}
	}
	fmt.Printf("   published: %d confirmed of %d in %s\n", len(accepted), o.messages, pubEnd.Sub(start).Round(time.Millisecond))
	if _, err := r.awaitRows(ctx, env.pool, "raw_messages", len(accepted)); err != nil {
		return err
	}
	cpu1 := r.snapCPU(0)
	stopConsumers()
	cwg.Wait()
	if consumeErr != nil {
		return fmt.Errorf("consume: %w", consumeErr)
	}
	st, err := storageStats(ctx, env.pool, "raw_messages", accepted)
	if err != nil {
		return err
	}
	rate := float64(len(accepted)) / pubEnd.Sub(start).Seconds()
	s.add("publish_rate", "publishes confirmed/s", rate, "1/s", fmtRate(rate))
	r.recordStorage(s, st, start, cpu0, cpu1)
	return nil
}

// publishPipelined publishes messages taken from next with up to -raw-window confirms outstanding.
func publishPipelined(ctx context.Context, ch *amqp.Channel, o options, queues []string, next *atomic.Int64,
	ids []uuid.UUID, confirmed []bool) error {
	type pending struct {
		i  int
		dc *amqp.DeferredConfirmation
	}
	window := make([]pending, 0, o.rawWindow)
	settle := func(p pending) error {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		ack, err := p.dc.WaitContext(wctx)
		if err != nil {
			return fmt.Errorf("confirm: %w", err)
		}
		confirmed[p.i] = ack
		return nil
	}
	for {
		i := int(next.Add(1) - 1)
		if i >= len(ids) || ctx.Err() != nil {
			break
		}
		id := uuid.Must(uuid.NewV7())
		ids[i] = id
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queues[i%len(queues)], false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, ContentType: "application/json", MessageId: id.String(),
			Headers: amqp.Table{"x-created-at": time.Now().UnixMicro()}, Body: makePayload(i, o.payload),
		})
		if err != nil {
			return err
		}
		window = append(window, pending{i, dc})
		if len(window) >= o.rawWindow {
			if err := settle(window[0]); err != nil {
				return err
			}
			window = window[1:]
		}
	}
	for _, p := range window {
		if err := settle(p); err != nil {
			return err
		}
	}
	return ctx.Err()
}

var rawColumns = []string{"id", "tenant_id", "payload", "created_at"}

// rawConsume stores what is waiting on the channel in one COPY and acks it (multiple) after the commit.
func (r *runner) rawConsume(ctx context.Context, env *benchEnv, tenant uuid.UUID, in <-chan amqp.Delivery,
	stored *atomic.Int64) error {
	// amqp091-go hands deliveries over an unbuffered channel, one at a time: a non-blocking receive right after
	// a receive finds nothing. A buffer as deep as the prefetch makes "what is waiting" visible.
	deliveries := make(chan amqp.Delivery, r.opt.rawPrefetch)
	go func() {
		defer close(deliveries)
		for d := range in {
			deliveries <- d
		}
	}()
	batch := make([]amqp.Delivery, 0, r.opt.rawBatch)
	rows := make([][]any, 0, r.opt.rawBatch)
	for {
		batch, rows = batch[:0], rows[:0]
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-deliveries:
			if !ok {
				return nil
			}
			batch = append(batch, d)
		}
	more:
		for len(batch) < r.opt.rawBatch {
			select {
			case d, ok := <-deliveries:
				if !ok {
					break more
				}
				batch = append(batch, d)
			default:
				break more
			}
		}
		for _, d := range batch {
			id, err := uuid.Parse(d.MessageId)
			if err != nil {
				return fmt.Errorf("message_id %q: %w", d.MessageId, err)
			}
			micros, _ := d.Headers["x-created-at"].(int64)
			rows = append(rows, []any{id, tenant, json.RawMessage(d.Body), time.UnixMicro(micros)})
		}
		_, err := env.pool.CopyFrom(ctx, pgx.Identifier{"raw_messages"}, rawColumns, pgx.CopyFromRows(rows))
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			// A redelivery of a stored message: store the batch idempotently instead.
			err = insertIgnoring(ctx, env, rows)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("copy %d rows: %w", len(rows), err)
		}
		if err := batch[len(batch)-1].Ack(true); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		stored.Add(int64(len(batch)))
	}
}

func insertIgnoring(ctx context.Context, env *benchEnv, rows [][]any) error {
	b := &pgx.Batch{}
	for _, row := range rows {
		b.Queue(`INSERT INTO raw_messages (id, tenant_id, payload, created_at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO NOTHING`, row...)
	}
	return env.pool.SendBatch(ctx, b).Close()
}
