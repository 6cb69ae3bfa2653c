package httpserver

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/health"
)

// AsRoutes annotates a constructor so that its result joins the "routes" value group.
func AsRoutes(f any) any {
	return fx.Annotate(f, fx.As(new(Routes)), fx.ResultTags(`group:"routes"`))
}

// Params are the Server's dependencies.
type Params struct {
	fx.In
	Config   config.Config
	Log      *zap.Logger
	Registry *prometheus.Registry
	Routes   []Routes `group:"routes"`
	Checks   health.Checks
	Auth     *auth.Authenticator `optional:"true"`
}

// Module runs the HTTP server: it starts last and stops first.
var Module = fx.Module("httpserver",
	fx.Provide(func(p Params) *Server {
		o := Options{Addr: p.Config.HTTPAddr, MaxBodyBytes: p.Config.HTTPMaxBodyBytes,
			MaxBatchBodyBytes: p.Config.HTTPMaxBatchBodyBytes, ReadHeaderTimeout: p.Config.HTTPReadHeaderTimeout,
			ReadTimeout: p.Config.HTTPReadTimeout, WriteTimeout: p.Config.HTTPWriteTimeout,
			IdleTimeout: p.Config.HTTPIdleTimeout, MaxHeaderBytes: p.Config.HTTPMaxHeaderBytes}
		if p.Auth != nil {
			o.Authenticate = p.Auth.Middleware
		}
		return New(o, p.Log, p.Registry, p.Routes, p.Checks.All)
	}),
	fx.Invoke(func(lc fx.Lifecycle, s *Server, c config.Config, log *zap.Logger) {
		lc.Append(fx.Hook{OnStart: s.Start, OnStop: s.Stop})
		if c.PprofAddr != "" {
			p := NewProfiler(c.PprofAddr, log)
			lc.Append(fx.Hook{OnStart: p.Start, OnStop: p.Stop})
		}
	}),
)
