package cluster

import (
	"context"

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
	// The relay's stop hook is registered here, before the consumer runtime's, so that it runs after the runtime's
	// stop: a replica shutting down hears until its consumers stopped which replicas took its tenants over
	// (events.TenantsConsumed, make-before-break). The relay itself is made, and starts, later (the Invoke below).
	fx.Provide(func(lc fx.Lifecycle) *relayStop {
		h := &relayStop{}
		lc.Append(fx.Hook{OnStop: h.stop})
		return h
	}),
	// *bun.DB is not used but orders the hooks: the heartbeats need the schema its start migrates. *relayStop is
	// not used either, and orders them too (see above).
	fx.Provide(func(lc fx.Lifecycle, _ *bun.DB, _ *relayStop, c config.Config, health *broker.PoolHealth, reg prometheus.Registerer,
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
	fx.Invoke(func(lc fx.Lifecycle, h *relayStop, conn *broker.Conn, p *broker.Publisher, bus *events.Bus, c config.Config,
		m *Membership, reg prometheus.Registerer, log *zap.Logger) {
		h.r = NewRelay(conn, p, bus, c.AMQPExchange+".events", c.ReplicaID, m.Members, registerRelayMetrics(reg), log)
		lc.Append(fx.Hook{OnStart: h.r.Start})
	}),
)

// relayStop stops the relay made after it (nil: none was made).
type relayStop struct{ r *Relay }

func (h *relayStop) stop(ctx context.Context) error {
	if h.r == nil {
		return nil
	}
	return h.r.Stop(ctx)
}
