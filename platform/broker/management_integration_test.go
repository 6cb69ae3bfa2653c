package broker_test

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

// TestManagementAgainstRabbitMQ drives every call of the management client against the real API: a virtual
// host whose name needs escaping is created, opened to the user, filled with queues and a connection, listed,
// and deleted.
func TestManagementAgainstRabbitMQ(t *testing.T) {
	s := testenv.Get(t)
	m, err := broker.NewManagement(s.ManagementURL, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	ov, err := m.Overview(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, ov.Node)
	require.NotEmpty(t, ov.RabbitMQVersion)

	vhost := testenv.RandomName("t_mgmt/") // a slash: the client must escape it in every path
	require.NoError(t, m.CreateVHost(ctx, vhost))
	t.Cleanup(func() { _ = m.DeleteVHost(context.Background(), vhost) })
	require.NoError(t, m.CreateVHost(ctx, vhost), "creating an existing virtual host succeeds")
	require.NoError(t, m.SetPermissions(ctx, vhost, m.User(), broker.FullPermissions))
	vhosts, err := m.VHosts(ctx)
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(vhosts, func(v broker.VHostInfo) bool { return v.Name == vhost }), "listed: %v", vhosts)

	u, err := url.Parse(s.AMQPURL)
	require.NoError(t, err)
	u.Path, u.RawPath = "/"+vhost, "/"+url.PathEscape(vhost)
	require.Equal(t, vhost, config.VHost(u.String()))
	conn, err := amqp.DialConfig(u.String(), amqp.Config{Properties: amqp.Table{"connection_name": "mgmt-test"}})
	require.NoError(t, err, "the permissions let the user in")
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	_, err = ch.QueueDeclare("sac", true, false, false, false, amqp.Table{"x-single-active-consumer": true, "x-queue-type": "quorum"})
	require.NoError(t, err)
	_, err = ch.QueueDeclare("plain", true, false, false, false, nil)
	require.NoError(t, err)
	_, err = ch.Consume("plain", "", false, false, false, false, nil)
	require.NoError(t, err)

	qs, err := m.Queues(ctx, vhost)
	require.NoError(t, err)
	byName := map[string]broker.QueueInfo{}
	for _, q := range qs {
		byName[q.Name] = q
	}
	require.Len(t, byName, 2)
	require.True(t, byName["sac"].SingleActiveConsumer())
	require.Equal(t, "quorum", byName["sac"].Type)
	require.False(t, byName["plain"].SingleActiveConsumer())
	require.Equal(t, "classic", byName["plain"].Type)
	require.Equal(t, vhost, byName["plain"].VHost)
	require.True(t, byName["plain"].Durable)
	records, err := m.QueueRecords(ctx, vhost)
	require.NoError(t, err)
	require.Len(t, records, 2)
	for _, q := range records {
		require.Equal(t, q.Name == "sac", q.SingleActiveConsumer(), q.Name)
		require.Equal(t, vhost, q.VHost)
	}

	// Consumers and connections come with the next statistics (every 5 s by default).
	testenv.Eventually(t, 20*time.Second, func() bool {
		q, err := m.Queue(ctx, vhost, "plain")
		return err == nil && q.Consumers == 1
	}, "the queue's consumer is not shown")
	testenv.Eventually(t, 20*time.Second, func() bool {
		cs, err := m.Connections(ctx, vhost)
		return err == nil && len(cs) == 1 && cs[0].ConnectionName() == "mgmt-test" && cs[0].VHost == vhost && cs[0].Channels == 1
	}, "the test's connection is not listed in its virtual host")
	all, err := m.Connections(ctx, "")
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(all, func(c broker.ConnectionInfo) bool { return c.VHost == vhost }))

	_, err = m.Queue(ctx, vhost, "missing")
	require.Equal(t, http.StatusNotFound, broker.ManagementStatus(err), "%v", err)

	require.NoError(t, m.DeleteVHost(ctx, vhost))
	err = m.DeleteVHost(ctx, vhost)
	require.Equal(t, http.StatusNotFound, broker.ManagementStatus(err), "%v", err)
	require.Contains(t, err.Error(), "DELETE /api/vhosts/"+url.PathEscape(vhost))
}

// TestManagementErrorsNameTheAnswerNotThePassword calls the API with a wrong password and with a deadline
// that has passed.
func TestManagementErrorsNameTheAnswerNotThePassword(t *testing.T) {
	s := testenv.Get(t)
	u, err := url.Parse(s.ManagementURL)
	require.NoError(t, err)
	u.User = url.UserPassword(u.User.Username(), "wrong-s3cret")
	m, err := broker.NewManagement(u.String(), nil)
	require.NoError(t, err)
	_, err = m.VHosts(context.Background())
	require.Equal(t, http.StatusUnauthorized, broker.ManagementStatus(err), "%v", err)
	require.Contains(t, err.Error(), "HTTP 401")
	require.NotContains(t, err.Error(), "wrong-s3cret")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = m.Queues(ctx, "/")
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, broker.ManagementStatus(err))
}
