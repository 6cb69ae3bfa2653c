package messaging

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/platform/broker"
)

// Handle stores a batch of deliveries from tenantID's queue in one multi-row insert that skips messages
// already stored. It implements the consumer runtime's Handler: the result holds one error per delivery,
// nil when it is stored (or was already), broker.Permanent when it can never be stored.
func (s *Service) Handle(ctx context.Context, tenantID uuid.UUID, ds []amqp.Delivery) []error {
	errs := make([]error, len(ds))
	now := time.Now()
	items := make([]item, 0, len(ds))
	for i, d := range ds {
		parts := []amqp.Delivery{d}
		if broker.IsEnvelope(d) {
			var err error
			if parts, err = broker.Unpack(d); err != nil {
				errs[i] = broker.Permanent(err)
				continue
			}
		}
		for _, p := range parts {
			m, err := decodeDelivery(tenantID, p, now)
			if err != nil {
				failItem(errs, i, p, broker.Permanent(err), len(parts) > 1 || broker.IsEnvelope(d))
				continue
			}
			items = append(items, item{msg: m, delivery: i, part: p, enveloped: broker.IsEnvelope(d)})
		}
	}
	s.store(ctx, tenantID, items, errs)
	return errs
}

// item is one message of a batch being stored: from delivery number delivery, itself (part) or one message of
// that envelope.
type item struct {
	msg       Message
	delivery  int
	part      amqp.Delivery
	enveloped bool
}

// failItem records that a message of delivery i can never be stored: the delivery's error when it is the
// message, or one more failed message of the envelope; a transient error of the delivery stays (it is retried
// whole).
func failItem(errs []error, i int, part amqp.Delivery, err error, enveloped bool) {
	if !enveloped {
		errs[i] = err
		return
	}
	switch e := errs[i].(type) {
	case nil:
		errs[i] = &broker.ItemsFailed{Items: []broker.FailedItem{{Delivery: part, Err: err}}}
	case *broker.ItemsFailed:
		e.Items = append(e.Items, broker.FailedItem{Delivery: part, Err: err})
	}
}

// store inserts items in one statement and records each delivery's outcome in errs.
func (s *Service) store(ctx context.Context, tenantID uuid.UUID, items []item, errs []error) {
	if len(items) == 0 {
		return
	}
	msgs := make([]Message, len(items))
	for i, it := range items {
		msgs[i] = it.msg
	}
	inserted, err := s.stores.insert(ctx, tenantID, msgs)
	if err != nil && isDataError(err) {
		// PostgreSQL refuses a value of the data itself: no retry can store that message, and in a multi-row
		// insert it would fail every other one. Store one by one, so that only the refused ones are dead-lettered.
		if len(items) == 1 {
			failItem(errs, items[0].delivery, items[0].part, broker.Permanent(fmt.Errorf("store message: %w", err)), items[0].enveloped)
			return
		}
		for _, it := range items {
			s.store(ctx, tenantID, []item{it}, errs)
		}
		return
	}
	if err != nil {
		err = fmt.Errorf("store %d messages: %w", len(msgs), err)
		for _, it := range items {
			errs[it.delivery] = err // transient: the whole delivery is tried again
		}
		return
	}
	label := s.metrics.tenant(tenantID)
	s.metrics.stored.WithLabelValues(label).Add(float64(inserted))
	if dup := int64(len(msgs)) - inserted; dup > 0 {
		s.metrics.duplicates.WithLabelValues(label).Add(float64(dup))
	}
	done := time.Now()
	for _, m := range msgs {
		s.metrics.latency.Observe(done.Sub(m.CreatedAt).Seconds())
	}
}

// isDataError reports whether err is PostgreSQL refusing a value (SQLSTATE class 22, data exception: a number
// out of range, invalid JSON or text, a time it cannot represent), which no retry mends.
func isDataError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}
