package broker

import (
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/httpserver"
)

// PublisherChannels is the number of confirming channels the publisher pool opens.
const PublisherChannels = 4

// Module provides *Conn and *Publisher and closes them at stop, after every consumer stopped.
var Module = fx.Module("broker",
	fx.Provide(
		func(lc fx.Lifecycle, c config.Config, log *zap.Logger) (*Conn, error) {
			conn, err := Dial(Options{URLs: c.AMQPURLList(), ReconnectInterval: c.AMQPReconnectInterval,
				ConnectionName: "msgsvc-" + c.ReplicaID}, log)
			if err != nil {
				return nil, err
			}
			lc.Append(fx.StopHook(conn.Close))
			return conn, nil
		},
		func(lc fx.Lifecycle, conn *Conn, c config.Config, log *zap.Logger) (*Publisher, error) {
			p, err := NewPublisher(conn, PublisherChannels, c.PublishConfirmTimeout, log)
			if err != nil {
				return nil, err
			}
			lc.Append(fx.StopHook(p.Close))
			return p, nil
		},
		httpserver.AsCheck(func(conn *Conn) httpserver.Check {
			return httpserver.Check{Name: "broker", Check: conn.Ping}
		}),
	),
)
