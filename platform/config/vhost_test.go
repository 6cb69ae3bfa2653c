package config

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVHost(t *testing.T) {
	for url, want := range map[string]string{
		"amqp://u:p@mq:5672":          "/",
		"amqp://u:p@mq:5672/":         "/",
		"amqp://u:p@mq:5672/tenant-a": "tenant-a",
		"amqp://u:p@mq:5672/a%2Fb":    "a/b",
		"amqp://u:p@mq:5672/%2F":      "/",
		"amqps://mq/with%20space":     "with space",
		"amqp://u:p@[::1":             "",
	} {
		require.Equal(t, want, VHost(url), url)
	}
}
