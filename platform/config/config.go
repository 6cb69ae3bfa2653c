// Package config loads the service's typed configuration from environment variables.
//
// Every setting has a default that suits local development; Load validates each value and
// names the offending variable when one is wrong, so a misconfigured process stops at start-up.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Config is the whole configuration of one service process.
type Config struct {
	// HTTPAddr is the listen address of the HTTP API (HTTP_ADDR).
	HTTPAddr string
	// HTTPMaxBodyBytes caps a request body (HTTP_MAX_BODY_BYTES).
	HTTPMaxBodyBytes int64
	// HTTPMaxBatchBodyBytes caps the body of a batch publish (HTTP_MAX_BATCH_BODY_BYTES).
	HTTPMaxBatchBodyBytes int64
	// HTTPReadHeaderTimeout bounds reading request headers (HTTP_READ_HEADER_TIMEOUT).
	HTTPReadHeaderTimeout time.Duration

	// HTTPReadTimeout bounds reading a whole request (HTTP_READ_TIMEOUT).
	HTTPReadTimeout time.Duration
	// HTTPWriteTimeout bounds writing a response (HTTP_WRITE_TIMEOUT).
	HTTPWriteTimeout time.Duration
	// HTTPIdleTimeout closes idle keep-alive connections (HTTP_IDLE_TIMEOUT).
	HTTPIdleTimeout time.Duration
	// HTTPMaxHeaderBytes caps request headers (HTTP_MAX_HEADER_BYTES).
	HTTPMaxHeaderBytes int

	// AuthMode is enabled or disabled (AUTH_MODE); disabled is for local experiments only.
	AuthMode string
	// AdminAPIKeys may call every endpoint (ADMIN_API_KEYS, comma-separated, each at least 16 characters).
	AdminAPIKeys []string
	// AuthCacheTTL is how long a tenant key lookup is remembered; a revoked key stops working within it
	// on every replica (AUTH_CACHE_TTL).
	AuthCacheTTL time.Duration
	// RateLimitDefault is each tenant's publish rate limit in messages per second for the whole cluster, 0 for
	// none, unless the tenant has its own (RATE_LIMIT_DEFAULT).
	RateLimitDefault float64
	// RateLimitExchangeInterval is how often each replica reports its tenants' publish demand to the others
	// and re-divides each tenant's limit by demand; 0 turns the exchange off, and each replica then applies
	// the whole limit on its own (RATE_LIMIT_EXCHANGE_INTERVAL).
	RateLimitExchangeInterval time.Duration
	// RetentionDefault is how long a tenant's messages are kept unless it has a retention of its own, 0 for
	// forever (RETENTION_DEFAULT).
	RetentionDefault time.Duration
	// RetentionInterval is how often each replica sweeps the expired messages and dead letters of the tenants
	// it owns (RETENTION_INTERVAL).
	RetentionInterval time.Duration
	// RetentionBatch is how many rows one delete of a sweep removes, each in its own short transaction
	// (RETENTION_BATCH).
	RetentionBatch int
	// RetentionSweepShare is the most of its time a sweep spends deleting: after each batch it pauses so long
	// that the batches take at most this share (RETENTION_SWEEP_SHARE).
	RetentionSweepShare float64
	// DeadLetterRetention is how long dead letters are kept after they were dead-lettered, 0 for forever
	// (DEAD_LETTER_RETENTION).
	DeadLetterRetention time.Duration

	// LogLevel is one of debug, info, warn, error (LOG_LEVEL).
	LogLevel string
	// LogFormat is json or console (LOG_FORMAT).
	LogFormat string

	// DatabaseURL is the PostgreSQL connection string (DATABASE_URL).
	DatabaseURL string
	// DBMaxOpenConns is the database pool size (DB_MAX_OPEN_CONNS).
	DBMaxOpenConns int
	// DBMaxIdleConns is the number of idle connections kept (DB_MAX_IDLE_CONNS).
	DBMaxIdleConns int
	// DBConnMaxLifetime recycles connections after this long (DB_CONN_MAX_LIFETIME).
	DBConnMaxLifetime time.Duration

	// AMQPURL is the RabbitMQ connection string (AMQP_URL); when only AMQP_URLS is set, its first URL.
	AMQPURL string
	// AMQPURLs are the AMQP URLs of a RabbitMQ cluster's nodes, in the order they are tried (AMQP_URLS,
	// comma-separated); nil when AMQP_URLS is unset. Dial AMQPURLList, which falls back to AMQPURL.
	AMQPURLs []string
	// RabbitMQManagementURL is the management API base URL, used to find orphan queues (RABBITMQ_MANAGEMENT_URL).
	RabbitMQManagementURL string
	// AMQPExchange is the direct exchange tenants' messages are published to (AMQP_EXCHANGE).
	AMQPExchange string
	// AMQPQueueType is quorum or classic (AMQP_QUEUE_TYPE).
	AMQPQueueType string
	// AMQPDeliveryLimit is how often a delivery is tried before it is dead-lettered (AMQP_DELIVERY_LIMIT).
	AMQPDeliveryLimit int
	// AMQPReconnectInterval is the base interval between reconnect attempts (AMQP_RECONNECT_INTERVAL).
	AMQPReconnectInterval time.Duration
	// AMQPChannelsPerConnection caps the consumer channels on one AMQP connection; 0 takes the negotiated
	// channel_max less 10% headroom (AMQP_CHANNELS_PER_CONNECTION).
	AMQPChannelsPerConnection int
	// PublishConfirmTimeout is the longest a publish request waits, from its start to its answer: queueing behind
	// the tenant's earlier publishes, a reconnect and the broker's confirm together (PUBLISH_CONFIRM_TIMEOUT).
	PublishConfirmTimeout time.Duration
	// PublishMaxPending is how many of one tenant's publishes may wait for the tenant's publish in flight; the
	// next ones are answered 503 at once (PUBLISH_MAX_PENDING).
	PublishMaxPending int
	// PublishMaxUnconfirmed is how many envelopes to one tenant's queue may wait for RabbitMQ's confirm, those
	// whose requests gave up included; the next publishes are answered 503 at once (PUBLISH_MAX_UNCONFIRMED).
	// Under 400, RabbitMQ's credit for a queue per channel, so a queue that does not answer never blocks a
	// publishing channel.
	PublishMaxUnconfirmed int
	// PublishLinger is how long a busy tenant's next envelope waits for the publishers its last confirm just
	// answered to come back (PUBLISH_LINGER); a tenant that had one message in flight never waits; 0 never waits.
	PublishLinger time.Duration

	// TenantDefaultConcurrency is the worker count of a tenant created without one (TENANT_DEFAULT_CONCURRENCY).
	TenantDefaultConcurrency int
	// TenantMaxConcurrency is the largest worker count a tenant may have (TENANT_MAX_CONCURRENCY).
	TenantMaxConcurrency int
	// PrefetchPerWorker is the number of unacknowledged deliveries per worker (CONSUMER_PREFETCH_PER_WORKER).
	PrefetchPerWorker int
	// ConsumerBatchSize is the most deliveries a worker stores in one insert (CONSUMER_BATCH_SIZE).
	ConsumerBatchSize int
	// ConsumerLinger is how long a store worker of a busy tenant waits for more deliveries to fill its batch
	// (CONSUMER_LINGER); 0 never waits.
	ConsumerLinger time.Duration
	// ConsumerAckDelay is how long a consumer's multiple ack may wait to cover the deliveries stored after it
	// (CONSUMER_ACK_DELAY); 0 acks at once.
	ConsumerAckDelay time.Duration
	// StoreInsertsInFlight is how many grouped inserts of the consumers run at once (STORE_INSERTS_IN_FLIGHT);
	// the stores that come meanwhile, of any tenants, wait and go together as one insert.
	StoreInsertsInFlight int
	// StoreLinger is how long the next grouped insert waits, after one that carried the stores of several
	// workers, for as many rows as that one had (STORE_LINGER); 0 never waits. An idle service never waits.
	StoreLinger time.Duration
	// StoreRetryInitial is the first backoff after a transient store failure (STORE_RETRY_INITIAL).
	StoreRetryInitial time.Duration
	// StoreRetryBudget is how long a worker retries one delivery before returning it to the queue (STORE_RETRY_BUDGET).
	StoreRetryBudget time.Duration
	// ConsumerDrainTimeout is how long a stopping consumer waits for its in-flight stores before it cancels
	// them; it closes only once they returned (CONSUMER_DRAIN_TIMEOUT).
	ConsumerDrainTimeout time.Duration
	// PartitionPoolSize is how many partitions, attached ahead of time for tenant ids allotted in advance,
	// the replicas keep ready for creations to claim; 0 turns the pool off and every creation attaches its
	// partition itself (PARTITION_POOL_SIZE).
	PartitionPoolSize int
	// PartitionPoolBatch is how many partitions one refill transaction attaches (PARTITION_POOL_BATCH).
	PartitionPoolBatch int
	// PartitionDropBatch is how many deleted tenants' partitions the background dropper removes with one
	// DROP TABLE (PARTITION_DROP_BATCH).
	PartitionDropBatch int
	// PartitionCatalogueVacuumAfter is how many partitions a replica's pool attaches or drops before it vacuums
	// PostgreSQL's catalogue tables, once the pool is full and quiet; 0 leaves it to autovacuum
	// (PARTITION_CATALOGUE_VACUUM_AFTER).
	PartitionCatalogueVacuumAfter int
	// ReconcileInterval is the period of the reconciliation loop (RECONCILE_INTERVAL).
	ReconcileInterval time.Duration
	// ViewRefreshInterval is how often each replica re-reads the tenants and their rate limits from the
	// database, catching up on events it missed (VIEW_REFRESH_INTERVAL).
	ViewRefreshInterval time.Duration

	// ReconcileOrphanGrace is how long a tenant queue must stay without a tenant before reconciliation deletes
	// it (RECONCILE_ORPHAN_GRACE).
	ReconcileOrphanGrace time.Duration

	// ShutdownTimeout is the Fx start and stop timeout; it must exceed the drain timeout (SHUTDOWN_TIMEOUT).
	ShutdownTimeout time.Duration
	// ReplicaID names this process among replicas (REPLICA_ID); default: host name and process id.
	ReplicaID string
	// ReplicaHeartbeatInterval is how often a replica renews its row in the replicas table and reads the live
	// set (REPLICA_HEARTBEAT_INTERVAL).
	ReplicaHeartbeatInterval time.Duration
	// ReplicaTTL is how long a replica without a heartbeat counts as alive; its tenants move after it
	// (REPLICA_TTL). A replica that cannot renew its heartbeat stops owning tenants ReplicaLeaseMargin before
	// the TTL runs out.
	ReplicaTTL time.Duration
	// ReplicaBrokerGrace is how long a replica's consumer connections to RabbitMQ may stay down before it stops
	// heartbeating, so that its tenants move to replicas that can consume them (REPLICA_BROKER_GRACE).
	ReplicaBrokerGrace time.Duration
	// PprofAddr, when set, serves net/http/pprof on this address, apart from the API (PPROF_ADDR).
	PprofAddr string
	// MetricsPerTenant turns per-tenant metric series on or off (METRICS_PER_TENANT).
	MetricsPerTenant bool
	// GCHeapFloorBytes lets the Go heap grow to what is live plus this before a collection, where that is more
	// than Go's default goal (about twice what is live) and collections come at least every 30 s
	// (GC_HEAP_FLOOR_BYTES; 0 for Go's default; ignored when GOGC is set).
	GCHeapFloorBytes int64
}

// Load reads the configuration from the process environment.
func Load() (Config, error) { return LoadFrom(os.Getenv) }

// LoadFrom reads the configuration through getenv, which returns "" for an unset variable.
func LoadFrom(getenv func(string) string) (Config, error) {
	r := reader{getenv: getenv}
	host, _ := os.Hostname()
	c := Config{
		HTTPAddr:                      r.str("HTTP_ADDR", ":8080"),
		HTTPMaxBodyBytes:              int64(r.int("HTTP_MAX_BODY_BYTES", 256<<10, 1024, 64<<20)),
		HTTPMaxBatchBodyBytes:         int64(r.int("HTTP_MAX_BATCH_BODY_BYTES", 8<<20, 1024, 256<<20)),
		HTTPReadHeaderTimeout:         r.dur("HTTP_READ_HEADER_TIMEOUT", 5*time.Second),
		HTTPReadTimeout:               r.dur("HTTP_READ_TIMEOUT", 30*time.Second),
		HTTPWriteTimeout:              r.dur("HTTP_WRITE_TIMEOUT", 30*time.Second),
		HTTPIdleTimeout:               r.dur("HTTP_IDLE_TIMEOUT", 2*time.Minute),
		HTTPMaxHeaderBytes:            r.int("HTTP_MAX_HEADER_BYTES", 64<<10, 4<<10, 1<<20),
		AuthMode:                      r.oneOf("AUTH_MODE", "enabled", "enabled", "disabled"),
		AdminAPIKeys:                  r.list("ADMIN_API_KEYS"),
		AuthCacheTTL:                  r.dur("AUTH_CACHE_TTL", 5*time.Second),
		RateLimitDefault:              r.float("RATE_LIMIT_DEFAULT", 0, 0, 1e9),
		RateLimitExchangeInterval:     r.durOrZero("RATE_LIMIT_EXCHANGE_INTERVAL", time.Second),
		RetentionDefault:              r.durOrZero("RETENTION_DEFAULT", 0),
		RetentionInterval:             r.dur("RETENTION_INTERVAL", time.Minute),
		RetentionBatch:                r.int("RETENTION_BATCH", 1000, 1, 100000),
		RetentionSweepShare:           r.float("RETENTION_SWEEP_SHARE", 0.25, 0.01, 1),
		DeadLetterRetention:           r.durOrZero("DEAD_LETTER_RETENTION", 30*24*time.Hour),
		LogLevel:                      r.oneOf("LOG_LEVEL", "info", "debug", "info", "warn", "error"),
		LogFormat:                     r.oneOf("LOG_FORMAT", "json", "json", "console"),
		DatabaseURL:                   r.url("DATABASE_URL", "postgres://msgsvc:msgsvc@127.0.0.1:27432/msgsvc?sslmode=disable", "postgres", "postgresql"),
		DBMaxOpenConns:                r.int("DB_MAX_OPEN_CONNS", 40, 1, 10000),
		DBMaxIdleConns:                r.int("DB_MAX_IDLE_CONNS", 40, 0, 10000),
		DBConnMaxLifetime:             r.dur("DB_CONN_MAX_LIFETIME", 30*time.Minute),
		AMQPURL:                       r.url("AMQP_URL", "amqp://guest:guest@127.0.0.1:27672/", "amqp", "amqps"),
		AMQPURLs:                      r.urlList("AMQP_URLS", "amqp", "amqps"),
		RabbitMQManagementURL:         r.optionalURL("RABBITMQ_MANAGEMENT_URL", "http", "https"),
		AMQPExchange:                  r.str("AMQP_EXCHANGE", "msgsvc.messages"),
		AMQPQueueType:                 r.oneOf("AMQP_QUEUE_TYPE", "quorum", "quorum", "classic"),
		AMQPDeliveryLimit:             r.int("AMQP_DELIVERY_LIMIT", 20, 1, 1000),
		AMQPReconnectInterval:         r.dur("AMQP_RECONNECT_INTERVAL", 100*time.Millisecond),
		AMQPChannelsPerConnection:     r.int("AMQP_CHANNELS_PER_CONNECTION", 0, 0, 65535),
		PublishConfirmTimeout:         r.dur("PUBLISH_CONFIRM_TIMEOUT", 5*time.Second),
		PublishLinger:                 r.durOrZero("PUBLISH_LINGER", time.Millisecond),
		PublishMaxPending:             r.int("PUBLISH_MAX_PENDING", 1024, 1, 1<<20),
		PublishMaxUnconfirmed:         r.int("PUBLISH_MAX_UNCONFIRMED", 256, 1, 399),
		TenantDefaultConcurrency:      r.int("TENANT_DEFAULT_CONCURRENCY", 3, 1, 10000),
		TenantMaxConcurrency:          r.int("TENANT_MAX_CONCURRENCY", 100, 1, 10000),
		PrefetchPerWorker:             r.int("CONSUMER_PREFETCH_PER_WORKER", 32, 1, 1000),
		ConsumerBatchSize:             r.int("CONSUMER_BATCH_SIZE", 32, 1, 1000),
		ConsumerLinger:                r.durOrZero("CONSUMER_LINGER", 2*time.Millisecond),
		ConsumerAckDelay:              r.durOrZero("CONSUMER_ACK_DELAY", 20*time.Millisecond),
		StoreInsertsInFlight:          r.int("STORE_INSERTS_IN_FLIGHT", 1, 1, 1000),
		StoreLinger:                   r.durOrZero("STORE_LINGER", time.Millisecond),
		StoreRetryInitial:             r.dur("STORE_RETRY_INITIAL", 100*time.Millisecond),
		StoreRetryBudget:              r.dur("STORE_RETRY_BUDGET", 30*time.Second),
		ConsumerDrainTimeout:          r.dur("CONSUMER_DRAIN_TIMEOUT", 10*time.Second),
		PartitionPoolSize:             r.int("PARTITION_POOL_SIZE", 200, 0, 1000000),
		PartitionPoolBatch:            r.int("PARTITION_POOL_BATCH", 20, 1, 1000),
		PartitionDropBatch:            r.int("PARTITION_DROP_BATCH", 20, 1, 10000),
		PartitionCatalogueVacuumAfter: r.int("PARTITION_CATALOGUE_VACUUM_AFTER", 1000, 0, 10000000),
		ReconcileInterval:             r.dur("RECONCILE_INTERVAL", 30*time.Second),
		ViewRefreshInterval:           r.dur("VIEW_REFRESH_INTERVAL", 10*time.Second),
		ReconcileOrphanGrace:          r.dur("RECONCILE_ORPHAN_GRACE", 2*time.Minute),
		ShutdownTimeout:               r.dur("SHUTDOWN_TIMEOUT", 30*time.Second),
		ReplicaID:                     r.str("REPLICA_ID", fmt.Sprintf("%s-%d", host, os.Getpid())),
		ReplicaHeartbeatInterval:      r.dur("REPLICA_HEARTBEAT_INTERVAL", 2*time.Second),
		ReplicaTTL:                    r.dur("REPLICA_TTL", 20*time.Second),
		ReplicaBrokerGrace:            r.dur("REPLICA_BROKER_GRACE", 15*time.Second),
		PprofAddr:                     r.str("PPROF_ADDR", ""),
		MetricsPerTenant:              r.bool("METRICS_PER_TENANT", true),
		GCHeapFloorBytes:              int64(r.int("GC_HEAP_FLOOR_BYTES", 64<<20, 0, 16<<30)),
	}
	if c.TenantDefaultConcurrency > c.TenantMaxConcurrency {
		r.fail("TENANT_DEFAULT_CONCURRENCY", fmt.Sprintf("%d exceeds TENANT_MAX_CONCURRENCY %d", c.TenantDefaultConcurrency, c.TenantMaxConcurrency))
	}
	for _, k := range c.AdminAPIKeys {
		if len(k) < 16 {
			r.fail("ADMIN_API_KEYS", "every key must be at least 16 characters")
			break
		}
	}
	if c.AuthMode == "enabled" && len(c.AdminAPIKeys) == 0 {
		r.fail("ADMIN_API_KEYS", "at least one admin key is required unless AUTH_MODE=disabled")
	}
	if least := c.ReplicaLeaseMargin() + 2*c.ReplicaHeartbeatInterval; c.ReplicaTTL < least {
		r.fail("REPLICA_TTL", fmt.Sprintf("%s must be at least CONSUMER_DRAIN_TIMEOUT %s plus 3 × REPLICA_HEARTBEAT_INTERVAL %s (%s): "+
			"a replica that cannot renew its heartbeat stops its consumers CONSUMER_DRAIN_TIMEOUT plus one interval "+
			"before the others may take them over, and must still have two heartbeats to renew it",
			c.ReplicaTTL, c.ConsumerDrainTimeout, c.ReplicaHeartbeatInterval, least))
	}
	if len(c.AMQPURLs) > 0 {
		if _, set := r.raw("AMQP_URL"); !set {
			c.AMQPURL = c.AMQPURLs[0]
		}
		for _, u := range c.AMQPURLs {
			if VHost(u) != VHost(c.AMQPURL) {
				r.fail("AMQP_URLS", "every URL, and AMQP_URL when set, must name the same virtual host")
				break
			}
		}
	}
	if c.ConsumerAckDelay > time.Second {
		// An ack that waits longer holds a stored delivery unacknowledged for nothing, and past RabbitMQ's
		// consumer_timeout the broker closes the channel.
		r.fail("CONSUMER_ACK_DELAY", fmt.Sprintf("%s exceeds 1s", c.ConsumerAckDelay))
	}
	if c.ShutdownTimeout <= c.ConsumerDrainTimeout {
		r.fail("SHUTDOWN_TIMEOUT", fmt.Sprintf("%s must exceed CONSUMER_DRAIN_TIMEOUT %s", c.ShutdownTimeout, c.ConsumerDrainTimeout))
	}
	return c, errors.Join(r.errs...)
}

// ReplicaLeaseMargin is how long before its REPLICA_TTL runs out a replica that could not renew its heartbeat
// stops owning tenants: CONSUMER_DRAIN_TIMEOUT, within which its consumers drain and stop, plus one
// REPLICA_HEARTBEAT_INTERVAL for the stop to begin. So its consumers are gone before the others, which count it
// live until the TTL, take its tenants over.
func (c Config) ReplicaLeaseMargin() time.Duration {
	return c.ConsumerDrainTimeout + c.ReplicaHeartbeatInterval
}

// AMQPURLList returns the AMQP URLs to dial, in order: AMQPURLs when set, else AMQPURL alone.
func (c Config) AMQPURLList() []string {
	if len(c.AMQPURLs) > 0 {
		return c.AMQPURLs
	}
	return []string{c.AMQPURL}
}

// VHost returns the virtual host an AMQP URL names: its path without the leading slash, "/" (RabbitMQ's default
// virtual host) when the path is empty or "/", "" when amqpURL does not parse.
func VHost(amqpURL string) string {
	u, err := url.Parse(amqpURL)
	if err != nil {
		return ""
	}
	if v := strings.TrimPrefix(u.Path, "/"); v != "" {
		return v
	}
	return "/"
}

type reader struct {
	getenv func(string) string
	errs   []error
}

func (r *reader) fail(name, why string) {
	r.errs = append(r.errs, fmt.Errorf("config: %s: %s", name, why))
}

func (r *reader) raw(name string) (string, bool) {
	v := strings.TrimSpace(r.getenv(name))
	return v, v != ""
}

func (r *reader) str(name, def string) string {
	if v, ok := r.raw(name); ok {
		return v
	}
	return def
}

func (r *reader) int(name string, def, lo, hi int) int {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.fail(name, fmt.Sprintf("%q is not an integer", v))
		return def
	}
	if n < lo || n > hi {
		r.fail(name, fmt.Sprintf("%d is outside %d..%d", n, lo, hi))
		return def
	}
	return n
}

func (r *reader) float(name string, def, lo, hi float64) float64 {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < lo || f > hi {
		r.fail(name, fmt.Sprintf("%q is not a number between %g and %g", v, lo, hi))
		return def
	}
	return f
}

// list reads a comma-separated list; its values are secrets and never echoed.
func (r *reader) list(name string) []string {
	v, ok := r.raw(name)
	if !ok {
		return nil
	}
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func (r *reader) dur(name string, def time.Duration) time.Duration {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		r.fail(name, fmt.Sprintf("%q is not a positive duration such as 5s or 250ms", v))
		return def
	}
	return d
}

// durOrZero is dur for a wait that 0 turns off.
func (r *reader) durOrZero(name string, def time.Duration) time.Duration {
	if v, ok := r.raw(name); ok && v == "0" {
		return 0
	}
	return r.dur(name, def)
}

func (r *reader) bool(name string, def bool) bool {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(name, fmt.Sprintf("%q is not a boolean (true or false)", v))
		return def
	}
	return b
}

func (r *reader) oneOf(name, def string, allowed ...string) string {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	for _, a := range allowed {
		if strings.EqualFold(v, a) {
			return a
		}
	}
	r.fail(name, fmt.Sprintf("%q is not one of %s", v, strings.Join(allowed, ", ")))
	return def
}

func (r *reader) url(name, def string, schemes ...string) string {
	v, ok := r.raw(name)
	if !ok {
		return def
	}
	r.checkURL(name, v, schemes)
	return v
}

// urlList reads a comma-separated list of URLs; like every URL, they may hold credentials and are never echoed.
func (r *reader) urlList(name string, schemes ...string) []string {
	list := r.list(name)
	for i, v := range list {
		r.checkURL(fmt.Sprintf("%s (URL %d)", name, i+1), v, schemes)
	}
	return list
}

func (r *reader) optionalURL(name string, schemes ...string) string {
	v, ok := r.raw(name)
	if ok {
		r.checkURL(name, v, schemes)
	}
	return v
}

func (r *reader) checkURL(name, v string, schemes []string) {
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		r.fail(name, "is not a URL with a host")
		return
	}
	for _, s := range schemes {
		if u.Scheme == s {
			return
		}
	}
	r.fail(name, fmt.Sprintf("scheme %q is not one of %s", u.Scheme, strings.Join(schemes, ", ")))
}
