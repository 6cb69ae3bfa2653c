package cluster

import (
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
// and leaves at stop.
var Module = fx.Module("cluster",
	fx.Provide(func(lc fx.Lifecycle, db *bun.DB, c config.Config, log *zap.Logger) *Membership {
		m := NewMembership(db, c.ReplicaID, c.ReplicaHeartbeatInterval, c.ReplicaTTL, log)
		lc.Append(fx.Hook{OnStart: m.Start, OnStop: m.Leave})
		return m
	}),
	fx.Invoke(func(lc fx.Lifecycle, conn *broker.Conn, p *broker.Publisher, bus *events.Bus, c config.Config, log *zap.Logger) {
		r := NewRelay(conn, p, bus, c.AMQPExchange+".events", c.ReplicaID, log)
		lc.Append(fx.Hook{OnStart: r.Start, OnStop: r.Stop})
	}),
)
