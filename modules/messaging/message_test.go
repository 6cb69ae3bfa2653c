package messaging

import (
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
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
