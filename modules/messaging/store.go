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
	items := decodeBatch(tenantID, ds, time.Now(), errs)
	s.store(ctx, tenantID, ds, items, errs)
	return errs
}

// decodeBatch turns deliveries into the messages they carry; a delivery or a message of an envelope that can
// never be stored gets its error in errs and no item. An envelope's messages are read from its body as they are,
// without a delivery of their own (broker.UnpackItem makes one for a message that fails).
func decodeBatch(tenantID uuid.UUID, ds []amqp.Delivery, now time.Time, errs []error) []item {
	envelopes := make([][]broker.EnvelopeItem, len(ds))
	n := 0
	for i, d := range ds {
		if !broker.IsEnvelope(d) {
			n++
			continue
		}
		parts, err := broker.DecodeEnvelope(d.Body)
		if err != nil {
			errs[i] = broker.Permanent(err)
			continue
		}
		envelopes[i], n = parts, n+len(parts)
	}
	items := make([]item, 0, n)
	for i, d := range ds {
		if !broker.IsEnvelope(d) {
			m, err := decodeDelivery(tenantID, d, now)
			if err != nil {
				errs[i] = broker.Permanent(err)
				continue
			}
			items = append(items, item{msg: m, delivery: i, part: -1})
			continue
		}
		for j, p := range envelopes[i] {
			m, err := decodeEnvelopeItem(tenantID, p)
			if err != nil {
				failItem(errs, ds, item{delivery: i, part: j, raw: p}, broker.Permanent(err))
				continue
			}
			items = append(items, item{msg: m, delivery: i, part: j, raw: p})
		}
	}
	return items
}

// item is one message of a batch being stored: delivery number delivery itself (part -1), or message number
// part of that envelope (raw).
type item struct {
	msg      Message
	delivery int
	part     int
	raw      broker.EnvelopeItem
}

// failItem records that the message of it can never be stored: the delivery's error when it is the message, or
// one more failed message of the envelope; a transient error of the delivery stays (it is retried whole).
func failItem(errs []error, ds []amqp.Delivery, it item, err error) {
	if it.part < 0 {
		errs[it.delivery] = err
		return
	}
	failed := broker.FailedItem{Delivery: broker.UnpackItem(ds[it.delivery], it.raw), Err: err}
	switch e := errs[it.delivery].(type) {
	case nil:
		errs[it.delivery] = &broker.ItemsFailed{Items: []broker.FailedItem{failed}}
	case *broker.ItemsFailed:
		e.Items = append(e.Items, failed)
	}
}

// store inserts items in one statement and records each delivery's outcome in errs.
func (s *Service) store(ctx context.Context, tenantID uuid.UUID, ds []amqp.Delivery, items []item, errs []error) {
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
			failItem(errs, ds, items[0], broker.Permanent(fmt.Errorf("store message: %w", err)))
			return
		}
		for _, it := range items {
			s.store(ctx, tenantID, ds, []item{it}, errs)
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
