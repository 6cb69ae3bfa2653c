package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
)

// Module relays tenant events between replicas. Register it after the modules that subscribe to tenant
// events, so that a local event reaches the other replicas after it took effect here.
//
// It also provides the replica Membership, which the consumer runtime uses to place tenants; it joins at start
// and leaves at stop. Its heartbeats use a database connection of their own, and it watches the consumer
// pool's connections (broker.PoolHealth).
var Module = fx.Module("cluster",
	// *bun.DB is not used but orders the hooks: the heartbeats need the schema its start migrates.
	fx.Provide(func(lc fx.Lifecycle, _ *bun.DB, c config.Config, health *broker.PoolHealth, reg prometheus.Registerer,
		log *zap.Logger) (*Membership, error) {
		beats, err := NewHeartbeats(c.DatabaseURL)
		if err != nil {
			return nil, err
		}
		m := NewMembership(beats, health, MembershipOptions{Self: c.ReplicaID, Interval: c.ReplicaHeartbeatInterval,
			TTL: c.ReplicaTTL, Margin: c.ReplicaLeaseMargin(), BrokerGrace: c.ReplicaBrokerGrace}, log)
		registerMetrics(reg, m)
		lc.Append(fx.Hook{OnStart: m.Start, OnStop: m.Leave})
		return m, nil
	}),
	fx.Invoke(func(lc fx.Lifecycle, conn *broker.Conn, p *broker.Publisher, bus *events.Bus, c config.Config, log *zap.Logger) {
		r := NewRelay(conn, p, bus, c.AMQPExchange+".events", c.ReplicaID, log)
		lc.Append(fx.Hook{OnStart: r.Start, OnStop: r.Stop})
	}),
)
