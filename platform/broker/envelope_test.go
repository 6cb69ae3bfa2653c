package broker

import (
	"testing"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	items := []EnvelopeItem{
		{ID: uuid.New(), CreatedAt: 1764590000123456, Payload: []byte(`{"a":1}`)},
		{ID: uuid.New(), CreatedAt: -5, Payload: []byte(`[]`)},
		{ID: uuid.New(), CreatedAt: 7, Payload: []byte{}},
	}
	got, err := DecodeEnvelope(EncodeEnvelope(items))
	require.NoError(t, err)
	require.Equal(t, items, got)

	d := amqp.Delivery{MessageId: "env", DeliveryTag: 9, Body: EncodeEnvelope(items),
		Headers: amqp.Table{HeaderEnvelope: int64(3), "x-msgsvc-attempts": int64(2)}}
	require.True(t, IsEnvelope(d))
	parts, err := Unpack(d)
	require.NoError(t, err)
	require.Len(t, parts, 3)
	for i, p := range parts {
		require.Equal(t, items[i].ID.String(), p.MessageId)
		require.Equal(t, items[i].Payload, p.Body)
		require.Equal(t, items[i].CreatedAt, p.Headers[HeaderCreatedAt])
		require.Equal(t, int64(2), p.Headers["x-msgsvc-attempts"], "the envelope's headers apply to its messages")
		require.False(t, IsEnvelope(p))
		require.Equal(t, uint64(9), p.DeliveryTag)
	}
	require.Equal(t, int64(3), d.Headers[HeaderEnvelope], "the envelope itself is unchanged")
}

func TestDecodeEnvelopeRefusesDamage(t *testing.T) {
	body := EncodeEnvelope([]EnvelopeItem{{ID: uuid.New(), Payload: []byte(`{"a":1}`)}})
	for name, b := range map[string][]byte{
		"empty": nil, "version": append([]byte{9}, body[1:]...), "no items": {envelopeVersion},
		"short header": body[:10], "short payload": body[:len(body)-1],
	} {
		_, err := DecodeEnvelope(b)
		require.Error(t, err, name)
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(EncodeEnvelope([]EnvelopeItem{{ID: uuid.New(), CreatedAt: 1, Payload: []byte(`{}`)}}))
	f.Add([]byte{envelopeVersion, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		items, err := DecodeEnvelope(b)
		if err != nil {
			return
		}
		require.Equal(t, b, EncodeEnvelope(items), "what decodes encodes back to the same bytes")
	})
}
