package broker_test

import (
	"context"
	"net"
	"net/url"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/test/testenv"
)

// deadURL returns amqpURL with its port replaced by one nothing listens on: a cluster node that is down.
func deadURL(t *testing.T, amqpURL string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	u, err := url.Parse(amqpURL)
	require.NoError(t, err)
	u.Host = addr
	return u.String()
}

// TestDialSkipsNodesThatAreDown gives the broker a list of nodes whose first is down: both the reconnecting
// connection and the administrative connection (declares, readiness) use the next node.
func TestDialSkipsNodesThatAreDown(t *testing.T) {
	s := testenv.Get(t)
	live := s.NewVHost(t)
	conn, err := broker.Dial(broker.Options{URLs: []string{deadURL(t, live), live}, ReconnectInterval: 100 * time.Millisecond,
		ConnectionName: "dial-test"}, zap.NewNop())
	require.NoError(t, err)
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, conn.Ping(ctx))
	require.NoError(t, conn.WithChannel(ctx, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare("dial-test", false, true, false, false, nil)
		return err
	}))
	exists, _, _ := testenv.QueueState(t, live, "dial-test")
	require.True(t, exists, "declared through the live node")
}

// TestDialFailsWhenNoNodeAnswers names no password in its error.
func TestDialFailsWhenNoNodeAnswers(t *testing.T) {
	s := testenv.Get(t)
	u, err := url.Parse(deadURL(t, s.AMQPURL))
	require.NoError(t, err)
	u.User = url.UserPassword("user", "s3cret")
	_, err = broker.Dial(broker.Options{URLs: []string{u.String(), u.String()}, ReconnectInterval: 100 * time.Millisecond}, zap.NewNop())
	require.Error(t, err)
	require.NotContains(t, err.Error(), "s3cret")
}
