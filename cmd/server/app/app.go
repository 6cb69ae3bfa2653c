// Package app assembles the service's Fx application from the platform and business modules. It holds no
// logic of its own; main and the end-to-end tests both start the application through Options.
package app

import (
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/modules/tenant"
	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/cluster"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/console"
	"github.com/acme/msgsvc/platform/database"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/gcfloor"
	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/logging"
	"github.com/acme/msgsvc/platform/metrics"
	"github.com/acme/msgsvc/platform/swagger"
)

// Options returns the whole application for cfg. Lifecycle hooks start in this order and stop in reverse:
// database (migrations), broker, the business modules (consumers), and the HTTP server last, so that on
// stop HTTP goes first, then consumers drain, then the broker and the database close.
func Options(cfg config.Config, extra ...fx.Option) fx.Option {
	return fx.Options(
		config.Module(cfg),
		fx.WithLogger(logging.FxLogger),
		fx.StartTimeout(cfg.ShutdownTimeout),
		fx.StopTimeout(cfg.ShutdownTimeout),
		logging.Module,
		gcfloor.Module,
		metrics.Module,
		events.Module,
		database.Module,
		broker.Module,
		auth.Module,
		tenant.Module,
		messaging.Module,
		consumer.Module,
		// The consumer runtime declares the Handler it needs; the messaging module's Service is it.
		fx.Provide(func(s *messaging.Service) consumer.Handler { return s }),
		// The messaging module's lookups declare the ConsumerState they need (dead letters, queue depth); the
		// consumer runtime is it.
		fx.Provide(func(r *consumer.Runtime) messaging.ConsumerState { return r }),
		// The messaging module drops a deleted tenant's partition once no replica consumes its queue.
		fx.Provide(func(r *consumer.Runtime) messaging.Consumers { return r }),
		cluster.Module,
		swagger.Module,
		console.Module,
		fx.Options(extra...),
		httpserver.Module,
	)
}
