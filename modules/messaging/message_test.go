package messaging

import (
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/broker"
)

func TestValidPayload(t *testing.T) {
	for _, ok := range []string{`{}`, `[]`, ` {"a":[1,2,{"b":null}]} `, `[1,"x"]`, `{"é":"ü"}`} {
		require.True(t, validPayload([]byte(ok)), ok)
	}
	for _, bad := range []string{``, `1`, `"s"`, `null`, `true`, `{`, `{"a":1}x`, "{\"a\":\"\xff\"}", `{"a":"\u0000"}`} {
		require.False(t, validPayload([]byte(bad)), bad)
	}
}

func TestDecodeDelivery(t *testing.T) {
	tenant := uuid.New()
	id := uuid.Must(uuid.NewV7())
	created := time.Date(2026, 11, 27, 10, 0, 0, 123456000, time.UTC)
	m, err := decodeDelivery(tenant, amqp.Delivery{MessageId: id.String(), Body: []byte(`{"a":1}`),
		Headers: amqp.Table{HeaderCreatedAt: created.UnixMicro()}}, time.Now())
	require.NoError(t, err)
	require.Equal(t, id, m.ID)
	require.Equal(t, tenant, m.TenantID)
	require.Equal(t, created, m.CreatedAt)
	require.JSONEq(t, `{"a":1}`, string(m.Payload))

	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m, err = decodeDelivery(tenant, amqp.Delivery{Body: []byte(`[1]`), Timestamp: ts}, time.Now())
	require.NoError(t, err)
	require.Equal(t, ts, m.CreatedAt)
	require.Equal(t, uuid.Version(7), m.ID.Version()) // a fresh id was made

	_, err = decodeDelivery(tenant, amqp.Delivery{MessageId: "nope", Body: []byte(`{}`)}, time.Now())
	require.Error(t, err)
	_, err = decodeDelivery(tenant, amqp.Delivery{MessageId: id.String(), Body: []byte(`not json`)}, time.Now())
	require.Error(t, err)

	// Creation times the API could not write as RFC 3339, though PostgreSQL would store them.
	for _, at := range []time.Time{time.Date(-249, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(0, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)} {
		_, err = decodeDelivery(tenant, amqp.Delivery{MessageId: id.String(), Body: []byte(`{}`),
			Headers: amqp.Table{HeaderCreatedAt: at.UnixMicro()}}, time.Now())
		require.Error(t, err, "created at %s", at)
	}
	for _, at := range []time.Time{time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC)} {
		m, err = decodeDelivery(tenant, amqp.Delivery{MessageId: id.String(), Body: []byte(`{}`),
			Headers: amqp.Table{HeaderCreatedAt: at.UnixMicro()}}, time.Now())
		require.NoError(t, err, "created at %s", at)
		require.Equal(t, at, m.CreatedAt)
	}
}

func TestMessageID(t *testing.T) {
	a, b := uuid.New(), uuid.New()
	require.Equal(t, messageID(a, "k1"), messageID(a, "k1"))
	require.NotEqual(t, messageID(a, "k1"), messageID(b, "k1"))
	require.NotEqual(t, messageID(a, "k1"), messageID(a, "k2"))
	require.Equal(t, uuid.Version(7), messageID(a, "").Version())
}

func TestPartitionName(t *testing.T) {
	id := uuid.MustParse("0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b")
	require.Equal(t, "messages_tenant_0193a5b07c1e7d2f9a4b1c2d3e4f5a6b", PartitionName(id))
}

func TestDecodeBatchReadsEnvelopesAndKeepsWhatFailsApart(t *testing.T) {
	tenant := uuid.New()
	at := time.Date(2026, 12, 7, 1, 2, 3, 456789000, time.UTC)
	good := func(body string) broker.EnvelopeItem {
		return broker.EnvelopeItem{ID: uuid.Must(uuid.NewV7()), CreatedAt: at.UnixMicro(), Payload: []byte(body)}
	}
	inEnvelope := []broker.EnvelopeItem{good(`{"n":1}`), good(`not json`), good(` [2] `),
		{ID: uuid.Must(uuid.NewV7()), CreatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro(), Payload: []byte(`{}`)}}
	envelope := amqp.Delivery{DeliveryTag: 7, Body: broker.EncodeEnvelope(inEnvelope),
		Headers: amqp.Table{broker.HeaderEnvelope: int32(len(inEnvelope)), "x-other": "kept"}}
	plainID := uuid.Must(uuid.NewV7())
	ds := []amqp.Delivery{
		{MessageId: plainID.String(), Body: []byte(`{"plain":true}`), Headers: amqp.Table{HeaderCreatedAt: at.UnixMicro()}},
		envelope,
		{MessageId: uuid.NewString(), Body: []byte(`"a string"`)},
		{Body: []byte{9, 9, 9}, Headers: amqp.Table{broker.HeaderEnvelope: int32(2)}}, // damaged
	}
	errs := make([]error, len(ds))
	items := decodeBatch(tenant, ds, time.Now(), errs)

	require.Len(t, items, 3)
	require.Equal(t, plainID, items[0].msg.ID)
	require.Equal(t, -1, items[0].part)
	for k, j := range []int{0, 2} {
		it := items[k+1]
		require.Equal(t, 1, it.delivery)
		require.Equal(t, j, it.part)
		// What a message of an envelope becomes is what it would be as a delivery of its own.
		want, err := decodeDelivery(tenant, broker.UnpackItem(envelope, inEnvelope[j]), time.Now())
		require.NoError(t, err)
		require.Equal(t, want, it.msg)
		require.Equal(t, at, it.msg.CreatedAt)
		require.Equal(t, tenant, it.msg.TenantID)
	}
	require.Equal(t, `[2]`, string(items[2].msg.Payload))

	require.NoError(t, errs[0])
	var failed *broker.ItemsFailed
	require.ErrorAs(t, errs[1], &failed)
	require.Len(t, failed.Items, 2) // the bad payload and the year 10000; the envelope is settled, they dead-lettered
	for k, j := range []int{1, 3} {
		d := failed.Items[k].Delivery
		require.Equal(t, inEnvelope[j].ID.String(), d.MessageId)
		require.Equal(t, inEnvelope[j].Payload, d.Body)
		require.Equal(t, uint64(7), d.DeliveryTag)
		require.Equal(t, "kept", d.Headers["x-other"])
		require.NotContains(t, d.Headers, broker.HeaderEnvelope)
		require.True(t, broker.IsPermanent(failed.Items[k].Err))
	}
	require.True(t, broker.IsPermanent(errs[2]))
	require.True(t, broker.IsPermanent(errs[3]))
}
