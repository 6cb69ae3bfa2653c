package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// adminKey is a valid admin key; configuration needs one unless AUTH_MODE=disabled.
const adminKey = "admin-key-0123456789"

func env(kv map[string]string) func(string) string {
	return func(k string) string {
		if k == "ADMIN_API_KEYS" {
			if v, ok := kv[k]; ok {
				return v
			}
			return adminKey
		}
		return kv[k]
	}
}

func TestDefaults(t *testing.T) {
	c, err := LoadFrom(env(nil))
	require.NoError(t, err)
	require.Equal(t, ":8080", c.HTTPAddr)
	require.EqualValues(t, 256<<10, c.HTTPMaxBodyBytes)
	require.Equal(t, "quorum", c.AMQPQueueType)
	require.Equal(t, 3, c.TenantDefaultConcurrency)
	require.Equal(t, 100, c.TenantMaxConcurrency)
	require.Equal(t, 5*time.Second, c.PublishConfirmTimeout)
	require.Equal(t, 30*time.Second, c.ReconcileInterval)
	require.Equal(t, "json", c.LogFormat)
	require.True(t, c.MetricsPerTenant)
	require.NotEmpty(t, c.ReplicaID)
	require.Equal(t, "enabled", c.AuthMode)
	require.Equal(t, []string{adminKey}, c.AdminAPIKeys)
	require.Zero(t, c.RateLimitDefault)
	require.Equal(t, 30*time.Second, c.HTTPReadTimeout)
	require.EqualValues(t, 64<<20, c.GCHeapFloorBytes)
	require.Equal(t, 20*time.Millisecond, c.ConsumerAckDelay)
}

func TestOverrides(t *testing.T) {
	c, err := LoadFrom(env(map[string]string{
		"HTTP_ADDR": "127.0.0.1:9000", "HTTP_MAX_BODY_BYTES": "4096", "HTTP_MAX_BATCH_BODY_BYTES": "8192", "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "console",
		"DATABASE_URL": "postgres://u:p@db:5432/x", "DB_MAX_OPEN_CONNS": "7", "DB_MAX_IDLE_CONNS": "3",
		"DB_CONN_MAX_LIFETIME": "1m", "AMQP_URL": "amqps://u:p@mq/", "RABBITMQ_MANAGEMENT_URL": "http://u:p@mq:15672",
		"AMQP_EXCHANGE": "ex", "AMQP_QUEUE_TYPE": "classic", "AMQP_DELIVERY_LIMIT": "5",
		"AMQP_RECONNECT_INTERVAL": "2s", "PUBLISH_CONFIRM_TIMEOUT": "1500ms", "PUBLISH_MAX_PENDING": "64", "PUBLISH_MAX_UNCONFIRMED": "100", "TENANT_DEFAULT_CONCURRENCY": "2",
		"TENANT_MAX_CONCURRENCY": "50", "CONSUMER_PREFETCH_PER_WORKER": "8", "CONSUMER_BATCH_SIZE": "16", "STORE_RETRY_INITIAL": "10ms",
		"STORE_RETRY_BUDGET": "1m", "CONSUMER_DRAIN_TIMEOUT": "3s", "PARTITION_POOL_SIZE": "7", "PARTITION_POOL_BATCH": "3", "PARTITION_DROP_BATCH": "4", "PARTITION_CATALOGUE_VACUUM_AFTER": "0", "RECONCILE_INTERVAL": "5s", "RECONCILE_ORPHAN_GRACE": "7s",
		"SHUTDOWN_TIMEOUT": "9s", "REPLICA_ID": "r1", "METRICS_PER_TENANT": "false",
		"HTTP_READ_HEADER_TIMEOUT": "2s", "HTTP_READ_TIMEOUT": "3s", "HTTP_WRITE_TIMEOUT": "4s", "HTTP_IDLE_TIMEOUT": "5s",
		"HTTP_MAX_HEADER_BYTES": "8192", "AUTH_MODE": "disabled", "ADMIN_API_KEYS": " k1-0123456789abcdef , k2-0123456789abcdef ",
		"AUTH_CACHE_TTL": "1s", "RATE_LIMIT_DEFAULT": "12.5", "RATE_LIMIT_EXCHANGE_INTERVAL": "0", "PPROF_ADDR": "127.0.0.1:6060",
		"CONSUMER_LINGER": "3ms", "CONSUMER_ACK_DELAY": "5ms", "PUBLISH_LINGER": "0", "STORE_INSERTS_IN_FLIGHT": "3", "STORE_LINGER": "0", "VIEW_REFRESH_INTERVAL": "4s", "AMQP_CHANNELS_PER_CONNECTION": "500", "REPLICA_HEARTBEAT_INTERVAL": "1s", "REPLICA_TTL": "6s",
		"REPLICA_BROKER_GRACE": "5s", "GC_HEAP_FLOOR_BYTES": "0",
		"RETENTION_DEFAULT": "1h", "RETENTION_INTERVAL": "2s", "RETENTION_BATCH": "50", "DEAD_LETTER_RETENTION": "0", "RETENTION_SWEEP_SHARE": "0.5",
	}))
	require.NoError(t, err)
	require.Equal(t, Config{
		HTTPAddr: "127.0.0.1:9000", HTTPMaxBodyBytes: 4096, HTTPMaxBatchBodyBytes: 8192, HTTPReadHeaderTimeout: 2 * time.Second,
		LogLevel: "debug", LogFormat: "console",
		DatabaseURL: "postgres://u:p@db:5432/x", DBMaxOpenConns: 7, DBMaxIdleConns: 3, DBConnMaxLifetime: time.Minute,
		AMQPURL: "amqps://u:p@mq/", RabbitMQManagementURL: "http://u:p@mq:15672", AMQPExchange: "ex",
		AMQPQueueType: "classic", AMQPDeliveryLimit: 5, AMQPReconnectInterval: 2 * time.Second,
		PublishConfirmTimeout: 1500 * time.Millisecond, PublishMaxPending: 64, PublishMaxUnconfirmed: 100, TenantDefaultConcurrency: 2, TenantMaxConcurrency: 50,
		PrefetchPerWorker: 8, ConsumerBatchSize: 16, StoreRetryInitial: 10 * time.Millisecond, StoreRetryBudget: time.Minute,
		ConsumerDrainTimeout: 3 * time.Second, PartitionPoolSize: 7, PartitionPoolBatch: 3, PartitionDropBatch: 4, PartitionCatalogueVacuumAfter: 0, ReconcileInterval: 5 * time.Second, ReconcileOrphanGrace: 7 * time.Second, ShutdownTimeout: 9 * time.Second,
		ReplicaID: "r1", MetricsPerTenant: false,
		HTTPReadTimeout: 3 * time.Second, HTTPWriteTimeout: 4 * time.Second, HTTPIdleTimeout: 5 * time.Second,
		HTTPMaxHeaderBytes: 8192, AuthMode: "disabled", AdminAPIKeys: []string{"k1-0123456789abcdef", "k2-0123456789abcdef"},
		AuthCacheTTL: time.Second, RateLimitDefault: 12.5, PprofAddr: "127.0.0.1:6060",
		ConsumerLinger: 3 * time.Millisecond, ConsumerAckDelay: 5 * time.Millisecond, PublishLinger: 0, StoreInsertsInFlight: 3, StoreLinger: 0, ViewRefreshInterval: 4 * time.Second, AMQPChannelsPerConnection: 500, ReplicaHeartbeatInterval: time.Second, ReplicaTTL: 6 * time.Second,
		ReplicaBrokerGrace: 5 * time.Second,
		RetentionDefault:   time.Hour, RetentionInterval: 2 * time.Second, RetentionBatch: 50, DeadLetterRetention: 0, RetentionSweepShare: 0.5,
	}, c)
}

func TestBadValuesNameTheVariable(t *testing.T) {
	cases := map[string]map[string]string{
		"HTTP_MAX_BODY_BYTES":        {"HTTP_MAX_BODY_BYTES": "lots"},
		"DB_MAX_OPEN_CONNS":          {"DB_MAX_OPEN_CONNS": "0"},
		"PUBLISH_CONFIRM_TIMEOUT":    {"PUBLISH_CONFIRM_TIMEOUT": "5"},
		"AMQP_QUEUE_TYPE":            {"AMQP_QUEUE_TYPE": "stream"},
		"REPLICA_TTL":                {"REPLICA_HEARTBEAT_INTERVAL": "5s", "REPLICA_TTL": "6s"},
		"REPLICA_BROKER_GRACE":       {"REPLICA_BROKER_GRACE": "0"},
		"DATABASE_URL":               {"DATABASE_URL": "mysql://x@y/z"},
		"AMQP_URL":                   {"AMQP_URL": "not a url"},
		"AMQP_URLS":                  {"AMQP_URLS": "amqp://u:p@mq1/, https://u:p@mq2/"},
		"METRICS_PER_TENANT":         {"METRICS_PER_TENANT": "maybe"},
		"TENANT_DEFAULT_CONCURRENCY": {"TENANT_DEFAULT_CONCURRENCY": "200"},
		"SHUTDOWN_TIMEOUT":           {"SHUTDOWN_TIMEOUT": "1s"},
		"LOG_LEVEL":                  {"LOG_LEVEL": "loud"},
		"ADMIN_API_KEYS":             {"ADMIN_API_KEYS": ""},
		"RATE_LIMIT_DEFAULT":         {"RATE_LIMIT_DEFAULT": "-1"},
		"AUTH_MODE":                  {"AUTH_MODE": "open"},
		"GC_HEAP_FLOOR_BYTES":        {"GC_HEAP_FLOOR_BYTES": "-1"},
		"CONSUMER_ACK_DELAY":         {"CONSUMER_ACK_DELAY": "2s"},
	}
	for name, kv := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := LoadFrom(env(kv))
			require.Error(t, err)
			require.Contains(t, err.Error(), name)
		})
	}
}

func TestShortAdminKeyIsRefusedWithoutEchoingIt(t *testing.T) {
	_, err := LoadFrom(env(map[string]string{"ADMIN_API_KEYS": "short-secret"}))
	require.ErrorContains(t, err, "ADMIN_API_KEYS")
	require.NotContains(t, err.Error(), "short-secret")
}

func TestAuthDisabledNeedsNoKeys(t *testing.T) {
	_, err := LoadFrom(env(map[string]string{"ADMIN_API_KEYS": "", "AUTH_MODE": "disabled"}))
	require.NoError(t, err)
}

func TestSecretsAreNotEchoed(t *testing.T) {
	_, err := LoadFrom(env(map[string]string{"DATABASE_URL": "mysql://user:s3cret@y/z"}))
	require.Error(t, err)
	require.NotContains(t, err.Error(), "s3cret")
}

func TestAMQPURLs(t *testing.T) {
	c, err := LoadFrom(env(map[string]string{"AMQP_URLS": " amqp://u:p@mq1:5672/v , amqp://u:p@mq2:5672/v,amqp://u:p@mq3:5672/v "}))
	require.NoError(t, err)
	want := []string{"amqp://u:p@mq1:5672/v", "amqp://u:p@mq2:5672/v", "amqp://u:p@mq3:5672/v"}
	require.Equal(t, want, c.AMQPURLs)
	require.Equal(t, want, c.AMQPURLList())
	require.Equal(t, want[0], c.AMQPURL, "AMQP_URL defaults to the first node")

	c, err = LoadFrom(env(map[string]string{"AMQP_URL": "amqp://u:p@mq:5672/v"}))
	require.NoError(t, err)
	require.Nil(t, c.AMQPURLs)
	require.Equal(t, []string{"amqp://u:p@mq:5672/v"}, c.AMQPURLList(), "AMQP_URL alone still works")

	c, err = LoadFrom(env(map[string]string{"AMQP_URL": "amqp://u:p@mq2:5672/v", "AMQP_URLS": "amqp://u:p@mq1:5672/v,amqp://u:p@mq2:5672/v"}))
	require.NoError(t, err)
	require.Equal(t, "amqp://u:p@mq2:5672/v", c.AMQPURL)
	require.Len(t, c.AMQPURLList(), 2)
}

func TestAMQPURLsNameOneVirtualHostWithoutEchoingSecrets(t *testing.T) {
	for _, kv := range []map[string]string{
		{"AMQP_URLS": "amqp://u:s3cret@mq1/a,amqp://u:s3cret@mq2/b"},
		{"AMQP_URLS": "amqp://u:s3cret@mq1/a", "AMQP_URL": "amqp://u:s3cret@mq1/"},
		{"AMQP_URLS": "amqp://u:s3cret@mq1/a,mysql://u:s3cret@mq2/a"},
	} {
		_, err := LoadFrom(env(kv))
		require.ErrorContains(t, err, "AMQP_URLS")
		require.NotContains(t, err.Error(), "s3cret")
	}
}

// TestReplicaTTLLeavesRoomForTheLease checks that REPLICA_TTL must cover the lease margin (the drain and an
// interval) and two heartbeats, and that the error says why.
func TestReplicaTTLLeavesRoomForTheLease(t *testing.T) {
	_, err := LoadFrom(env(map[string]string{"CONSUMER_DRAIN_TIMEOUT": "10s", "REPLICA_HEARTBEAT_INTERVAL": "2s", "REPLICA_TTL": "15s"}))
	require.ErrorContains(t, err, "REPLICA_TTL: 15s must be at least CONSUMER_DRAIN_TIMEOUT 10s plus 3 × REPLICA_HEARTBEAT_INTERVAL 2s (16s)")
	c, err := LoadFrom(env(map[string]string{"CONSUMER_DRAIN_TIMEOUT": "10s", "REPLICA_HEARTBEAT_INTERVAL": "2s", "REPLICA_TTL": "16s"}))
	require.NoError(t, err)
	require.Equal(t, 12*time.Second, c.ReplicaLeaseMargin())
}
