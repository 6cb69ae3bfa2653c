package cluster

import (
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
)

// Module relays tenant events between replicas. Register it after the modules that subscribe to tenant
// events, so that a local event reaches the other replicas after it took effect here.
var Module = fx.Module("cluster",
	fx.Invoke(func(lc fx.Lifecycle, conn *broker.Conn, p *broker.Publisher, bus *events.Bus, c config.Config, log *zap.Logger) {
		r := NewRelay(conn, p, bus, c.AMQPExchange+".events", c.ReplicaID, log)
		lc.Append(fx.Hook{OnStart: r.Start, OnStop: r.Stop})
	}),
)
