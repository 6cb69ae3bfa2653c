package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Headers of the service's wire format, shared by its publishers and consumers.
const (
	// HeaderCreatedAt carries a message's creation time in Unix microseconds (int64).
	HeaderCreatedAt = "x-created-at"
	// HeaderEnvelope marks an envelope: one AMQP message whose body carries several messages of one tenant
	// (EncodeEnvelope). Its value is how many.
	HeaderEnvelope = "x-msgsvc-envelope"
)

// EnvelopeItem is one message inside an envelope.
type EnvelopeItem struct {
	ID        uuid.UUID
	CreatedAt int64 // Unix microseconds
	Payload   []byte
}

// envelopeVersion is the first byte of an envelope's body.
const envelopeVersion = 1

// itemHeader is an item's fixed part: its id, its creation time and its payload's length.
const itemHeader = 16 + 8 + 4

// EncodeEnvelope writes items as one body: a version byte, then per item its 16-byte id, its creation time (8
// bytes) and its payload's length (4 bytes), big-endian, followed by the payload.
func EncodeEnvelope(items []EnvelopeItem) []byte {
	n := 1
	for _, it := range items {
		n += itemHeader + len(it.Payload)
	}
	b := make([]byte, 1, n)
	b[0] = envelopeVersion
	for _, it := range items {
		b = append(b, it.ID[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(it.CreatedAt))
		b = binary.BigEndian.AppendUint32(b, uint32(len(it.Payload)))
		b = append(b, it.Payload...)
	}
	return b
}

// DecodeEnvelope reads a body written by EncodeEnvelope. The items' payloads share body's memory.
func DecodeEnvelope(body []byte) ([]EnvelopeItem, error) {
	if len(body) == 0 || body[0] != envelopeVersion {
		return nil, errors.New("envelope: unknown version")
	}
	items := make([]EnvelopeItem, 0, envelopeCount(body))
	for rest := body[1:]; len(rest) > 0; {
		if len(rest) < itemHeader {
			return nil, fmt.Errorf("envelope: item %d truncated", len(items))
		}
		var it EnvelopeItem
		copy(it.ID[:], rest[:16])
		it.CreatedAt = int64(binary.BigEndian.Uint64(rest[16:24]))
		size := binary.BigEndian.Uint32(rest[24:28])
		rest = rest[itemHeader:]
		if uint64(size) > uint64(len(rest)) {
			return nil, fmt.Errorf("envelope: item %d truncated", len(items))
		}
		it.Payload, rest = rest[:size:size], rest[size:]
		items = append(items, it)
	}
	if len(items) == 0 {
		return nil, errors.New("envelope: empty")
	}
	return items, nil
}

// envelopeCount counts the items of an envelope's body by their lengths, stopping at a truncated one.
func envelopeCount(body []byte) int {
	n := 0
	for rest := body[1:]; len(rest) >= itemHeader; n++ {
		size := binary.BigEndian.Uint32(rest[24:28])
		if uint64(size) > uint64(len(rest)-itemHeader) {
			return n + 1
		}
		rest = rest[itemHeader+int(size):]
	}
	return n
}

// IsEnvelope reports whether a delivery is an envelope.
func IsEnvelope(d amqp.Delivery) bool {
	_, ok := d.Headers[HeaderEnvelope]
	return ok
}

// Unpack returns the messages of an envelope as deliveries of their own, as their publisher would have sent
// them one by one: each with its message id, its payload as body, and the envelope's headers with its own
// creation time. They share the envelope's channel and delivery tag: settle the envelope, never them.
func Unpack(d amqp.Delivery) ([]amqp.Delivery, error) {
	items, err := DecodeEnvelope(d.Body)
	if err != nil {
		return nil, err
	}
	out := make([]amqp.Delivery, len(items))
	for i, it := range items {
		out[i] = UnpackItem(d, it)
	}
	return out, nil
}

// UnpackItem returns item, a message of envelope d, as Unpack does.
func UnpackItem(d amqp.Delivery, item EnvelopeItem) amqp.Delivery {
	h := maps.Clone(d.Headers)
	delete(h, HeaderEnvelope)
	h[HeaderCreatedAt] = item.CreatedAt
	d.Headers, d.MessageId, d.Body = h, item.ID.String(), item.Payload
	return d
}

// ItemsFailed is a handler's result for an envelope of which some messages can never be stored (the others
// were): the consumer dead-letters those, each on its own, and settles the envelope.
type ItemsFailed struct {
	Items []FailedItem
}

// FailedItem is one message of an envelope that can never be stored, as Unpack returned it, and why.
type FailedItem struct {
	Delivery amqp.Delivery
	Err      error
}

func (e *ItemsFailed) Error() string {
	return fmt.Sprintf("%d messages of the envelope can never be stored; first: %v", len(e.Items), e.Items[0].Err)
}
