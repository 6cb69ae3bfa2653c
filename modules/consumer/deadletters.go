package consumer

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/platform/broker"
)

// DeadLetter describes one message in a tenant's dead-letter queue.
type DeadLetter struct {
	ID            string          `json:"id" example:"0193a5b0-9d3e-7f10-8c2b-3d4e5f6a7b8c"`
	Reason        string          `json:"reason" example:"undecodable"`
	LastError     string          `json:"last_error,omitempty" example:"payload must be a JSON object or array"`
	FirstSeen     *time.Time      `json:"first_seen,omitempty" example:"2026-11-27T10:00:00Z"`
	Payload       json.RawMessage `json:"payload,omitempty" swaggertype:"object"`
	RawPayload    string          `json:"raw_payload,omitempty" example:"not json"`
	DeliveryCount int64           `json:"delivery_count" example:"0"`
}

// DeadLetters is a look at a tenant's dead-letter queue.
type DeadLetters struct {
	Count int          `json:"count" example:"2"`
	Data  []DeadLetter `json:"data"`
}

// ListDeadLetters returns up to limit messages of the tenant's dead-letter queue without consuming them: they
// are fetched unacknowledged and returned to the queue when the channel closes.
func (r *Runtime) ListDeadLetters(ctx context.Context, id uuid.UUID, limit int) (DeadLetters, error) {
	out := DeadLetters{Data: []DeadLetter{}}
	err := r.conn.WithChannel(ctx, func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(DeadLetterQueueName(id), true, false, false, false, nil)
		if err != nil {
			return err
		}
		out.Count = q.Messages
		var last uint64
		for len(out.Data) < limit {
			d, ok, err := ch.Get(DeadLetterQueueName(id), false)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			out.Data = append(out.Data, describe(d))
			last = d.DeliveryTag
		}
		if last == 0 {
			return nil
		}
		// Return what was fetched, and wait (briefly) until the queue counts it again, so that whoever looks
		// or replays next sees every message.
		if err := ch.Nack(last, true, true); err != nil {
			return err
		}
		for range 40 {
			q, err := ch.QueueDeclarePassive(DeadLetterQueueName(id), true, false, false, false, nil)
			if err != nil || q.Messages >= out.Count {
				return err
			}
			time.Sleep(25 * time.Millisecond)
		}
		return nil
	})
	return out, err
}

func describe(d amqp.Delivery) DeadLetter {
	dl := DeadLetter{ID: d.MessageId, DeliveryCount: deliveryCount(d.Headers)}
	if json.Valid(d.Body) {
		dl.Payload = d.Body
	} else {
		dl.RawPayload = string(d.Body)
	}
	if v, ok := d.Headers[HeaderDeadLetterReason].(string); ok {
		dl.Reason = v
	}
	if v, ok := d.Headers[HeaderLastError].(string); ok {
		dl.LastError = v
	}
	if v, ok := d.Headers[HeaderDeadLetteredAt].(int64); ok {
		t := time.UnixMicro(v).UTC()
		dl.FirstSeen = &t
	}
	// Dead-lettered by the broker itself (a reject, or the delivery limit): x-death says why and when.
	if deaths, ok := d.Headers["x-death"].([]any); ok && len(deaths) > 0 {
		if death, ok := deaths[len(deaths)-1].(amqp.Table); ok {
			if dl.Reason == "" {
				if reason, _ := death["reason"].(string); reason == "delivery_limit" {
					dl.Reason = "retries_exhausted"
				} else {
					dl.Reason = reason
				}
			}
			if t, ok := death["time"].(time.Time); ok && dl.FirstSeen == nil {
				t = t.UTC()
				dl.FirstSeen = &t
			}
		}
	}
	return dl
}

// replayChunk is how many dead letters one replay step moves.
const replayChunk = 100

// ReplayDeadLetters moves up to limit messages (all that are there when it starts, when limit is 0) from the
// tenant's dead-letter queue back to its queue: each chunk is published, confirmed, then acked from the
// dead-letter queue, so a failure midway leaves every message in one queue or the other (a message confirmed
// but not acked yet is in both, and idempotent storage stores it once). A message that fails again and comes
// back while the replay runs is not replayed twice. It returns how many moved.
func (r *Runtime) ReplayDeadLetters(ctx context.Context, id uuid.UUID, limit int) (int, error) {
	moved := 0
	err := r.conn.WithChannel(ctx, func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(DeadLetterQueueName(id), true, false, false, false, nil)
		if err != nil {
			return err
		}
		if limit == 0 || limit > q.Messages {
			limit = q.Messages
		}
		empty := 0
		for moved < limit {
			var batch []amqp.Delivery
			for len(batch) < replayChunk && moved+len(batch) < limit {
				d, ok, err := ch.Get(DeadLetterQueueName(id), false)
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				batch = append(batch, d)
			}
			if len(batch) == 0 && empty < 10 {
				// Messages another channel just returned (a listing) take a moment to be ready again.
				empty++
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if len(batch) == 0 {
				return nil
			}
			msgs := make([]broker.Message, len(batch))
			for i, d := range batch {
				headers := map[string]any{}
				for k, v := range d.Headers {
					switch k {
					case "x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
						"x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count",
						HeaderDeadLetterReason, HeaderLastError, HeaderDeadLetteredAt:
					default:
						headers[k] = v
					}
				}
				msgs[i] = broker.Message{Exchange: r.opts.Exchange, RoutingKey: id.String(), MessageID: d.MessageId,
					Headers: headers, Body: d.Body, Mandatory: true}
			}
			if err := r.publisher.PublishAll(ctx, msgs); err != nil {
				return fmt.Errorf("republish: %w", err)
			}
			if err := ch.Ack(batch[len(batch)-1].DeliveryTag, true); err != nil {
				return err
			}
			moved += len(batch)
			r.metrics.replayed.WithLabelValues(r.metrics.tenant(id)).Add(float64(len(batch)))
		}
		return nil
	})
	return moved, err
}
