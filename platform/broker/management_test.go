package broker

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNewManagementKeepsCredentialsOutOfItsName(t *testing.T) {
	m, err := NewManagement("http://admin:s3cret@mq.example:15672/prefix/?x=1", nil)
	require.NoError(t, err)
	require.Equal(t, "http://mq.example:15672/prefix", m.String())
	require.Equal(t, "admin", m.User())
	require.Equal(t, "s3cret", m.pass)
	require.Same(t, defaultManagementClient, m.client, "nil client: the shared one with timeouts")
	require.NotZero(t, m.client.Timeout)

	own := &http.Client{}
	m, err = NewManagement("https://mq.example", own)
	require.NoError(t, err)
	require.Same(t, own, m.client)
	require.False(t, m.auth, "no credentials, no basic auth")
}

func TestNewManagementRejectsWhatIsNoHTTPURL(t *testing.T) {
	for _, raw := range []string{"amqp://u:s3cret@mq:5672/", "mq:15672", "http://", "http://u:s3cret@[::1"} {
		_, err := NewManagement(raw, nil)
		require.Error(t, err, raw)
		require.NotContains(t, err.Error(), "s3cret", raw)
	}
}

func TestManagementErrorSaysStatusAndBody(t *testing.T) {
	err := fmt.Errorf("create vhost: %w", &ManagementError{Method: http.MethodPut, Path: "/api/vhosts/x", Status: 401,
		Body: `{"error":"not_authorised","reason":"Login failed"}`})
	require.Equal(t, `create vhost: rabbitmq management PUT /api/vhosts/x: HTTP 401 Unauthorized: {"error":"not_authorised","reason":"Login failed"}`, err.Error())
	require.Equal(t, http.StatusUnauthorized, ManagementStatus(err))
	require.Zero(t, ManagementStatus(errors.New("connection refused")))
	require.Zero(t, ManagementStatus(nil))
}

func TestQueueInfoSingleActiveConsumer(t *testing.T) {
	require.True(t, QueueInfo{Arguments: map[string]any{"x-single-active-consumer": true}}.SingleActiveConsumer())
	require.False(t, QueueInfo{Arguments: map[string]any{"x-single-active-consumer": false}}.SingleActiveConsumer())
	require.False(t, QueueInfo{}.SingleActiveConsumer())
	require.Equal(t, "svc-1", ConnectionInfo{ClientProperties: map[string]any{"connection_name": "svc-1"}}.ConnectionName())
	require.Empty(t, ConnectionInfo{}.ConnectionName())
}

func TestPathOnlyDropsTheQuery(t *testing.T) {
	require.Equal(t, "/api/queues/%2F", pathOnly("/api/queues/%2F?columns=name"))
	require.Equal(t, "/api/vhosts/x", pathOnly("/api/vhosts/x"))
}

func TestQueuesNeedsAVirtualHost(t *testing.T) {
	m, err := NewManagement("http://127.0.0.1:1", nil)
	require.NoError(t, err)
	_, err = m.Queues(t.Context(), "")
	require.ErrorContains(t, err, "no virtual host")
}
