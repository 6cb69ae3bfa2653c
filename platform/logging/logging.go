// Package logging builds the service's zap logger and routes Fx's own events through it.
package logging

import (
	"fmt"

	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/acme/msgsvc/platform/config"
)

// New returns a zap logger at level, in JSON ("json") or human-readable ("console") format.
func New(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("logging: %w", err)
	}
	var cfg zap.Config
	if format == "console" {
		cfg = zap.NewDevelopmentConfig()
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
		cfg.DisableStacktrace = true
	} else {
		cfg = zap.NewProductionConfig()
		cfg.EncoderConfig.TimeKey = "ts"
		cfg.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		cfg.Sampling = nil
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	return cfg.Build()
}

// FromConfig builds the logger described by the configuration.
func FromConfig(c config.Config) (*zap.Logger, error) { return New(c.LogLevel, c.LogFormat) }

// Module provides *zap.Logger and makes Fx log its own events through it.
var Module = fx.Module("logging",
	fx.Provide(FromConfig),
	fx.Invoke(func(lc fx.Lifecycle, log *zap.Logger) {
		lc.Append(fx.StopHook(func() { _ = log.Sync() }))
	}),
)

// FxLogger is the fx.WithLogger constructor that sends Fx's events to zap.
func FxLogger(log *zap.Logger) fxevent.Logger {
	l := &fxevent.ZapLogger{Logger: log.Named("fx")}
	l.UseLogLevel(zapcore.DebugLevel)
	return l
}
