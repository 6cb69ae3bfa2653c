package auth

import (
	"context"

	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
)

// Module provides the *Authenticator, which the HTTP server runs on every /api request. It needs a TenantKeys,
// which the tenant module provides. A deleted tenant's keys stop working at once on every replica.
var Module = fx.Module("auth",
	fx.Provide(func(c config.Config, keys TenantKeys, bus *events.Bus, log *zap.Logger) *Authenticator {
		a := New(Options{Disabled: c.AuthMode == "disabled", AdminKeys: c.AdminAPIKeys, CacheTTL: c.AuthCacheTTL}, keys, log)
		events.Subscribe(bus, "auth.keys", func(_ context.Context, e events.TenantDeleting) error {
			a.ForgetTenant(e.TenantID)
			return nil
		})
		return a
	}),
)
