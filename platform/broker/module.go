package broker

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/health"
	"github.com/acme/msgsvc/platform/metrics"
)

// PublisherChannels is the number of confirming channels on the publishing connection.
const PublisherChannels = 4

// Module provides *Conn, *ConsumerPool, *PoolHealth and *Publisher and closes them at stop, after every consumer stopped.
var Module = fx.Module("broker",
	fx.Provide(
		func(lc fx.Lifecycle, c config.Config, reg prometheus.Registerer, log *zap.Logger) (*Conn, error) {
			conn, err := Dial(Options{URLs: c.AMQPURLList(), ReconnectInterval: c.AMQPReconnectInterval,
				ConnectionName: "msgsvc-" + c.ReplicaID}, log)
			if err != nil {
				return nil, err
			}
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "amqp_unanswered_queues",
				Help: "Queues about which a call of the administrative connection (a declare, passive declare or delete) has had no answer from the broker for longer than its bound; calls about them fail at once until it comes."},
				func() float64 { return float64(conn.Unanswered()) }))
			lc.Append(fx.StopHook(conn.Close))
			return conn, nil
		},
		func(lc fx.Lifecycle, c config.Config, log *zap.Logger) (*Publisher, error) {
			p, err := NewPublisher(PublisherOptions{URLs: c.AMQPURLList(), Name: "msgsvc-" + c.ReplicaID + "-publish",
				Channels: PublisherChannels, Timeout: c.PublishConfirmTimeout, ReconnectMax: 16 * c.AMQPReconnectInterval,
				MaxUnconfirmed: c.PublishMaxUnconfirmed}, log)
			if err != nil {
				return nil, err
			}
			lc.Append(fx.StopHook(p.Close))
			return p, nil
		},
		func(lc fx.Lifecycle, conn *Conn, c config.Config, reg prometheus.Registerer, log *zap.Logger) (*ConsumerPool, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			channelMax, err := conn.ChannelMax(ctx)
			if err != nil {
				return nil, err
			}
			p, err := NewConsumerPool(Options{URLs: c.AMQPURLList(), ReconnectInterval: c.AMQPReconnectInterval,
				ConnectionName: "msgsvc-" + c.ReplicaID}, PoolChannelsPerConn(channelMax, c.AMQPChannelsPerConnection), log)
			if err != nil {
				return nil, err
			}
			registerPoolMetrics(reg, p)
			lc.Append(fx.StopHook(p.Close))
			return p, nil
		},
		// Whether the consumer connections are up, for the cluster membership (REPLICA_BROKER_GRACE).
		func(lc fx.Lifecycle, p *ConsumerPool, c config.Config) *PoolHealth {
			h := NewPoolHealth(p, min(max(c.ReplicaBrokerGrace/4, 100*time.Millisecond), time.Second))
			lc.Append(fx.StartStopHook(h.Start, h.Stop))
			return h
		},
		health.AsCheck(func(conn *Conn) health.Check {
			return health.Check{Name: "broker", Check: conn.Ping}
		}),
	),
)

const poolLostHelp = "Consumer pool connections that dropped, by kind (shared, or isolated: one consumer's own); " +
	"the pool replaces them and their consumers start again, paced."

// registerPoolMetrics exports the consumer pool's connections and channels in use, read at scrape time.
func registerPoolMetrics(reg prometheus.Registerer, p *ConsumerPool) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "amqp_connections",
			Help: "AMQP connections this replica holds open, by role.", ConstLabels: prometheus.Labels{"role": "consumer"}},
			func() float64 { n, _ := p.Stats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "amqp_channels",
			Help: "AMQP channels in use on this replica's connections, by role.", ConstLabels: prometheus.Labels{"role": "consumer"}},
			func() float64 { _, n := p.Stats(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "amqp_pool_connections_lost_total",
			Help: poolLostHelp, ConstLabels: prometheus.Labels{"kind": "shared"}},
			func() float64 { return float64(p.Lost()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "amqp_pool_connections_lost_total",
			Help: poolLostHelp, ConstLabels: prometheus.Labels{"kind": "isolated"}},
			func() float64 { return float64(p.LostIsolated()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "amqp_pool_isolated_connections",
			Help: "Consumer pool connections of one consumer each, for tenants whose consume made their connection drop."},
			func() float64 { return float64(p.Isolated()) }),
	)
}
