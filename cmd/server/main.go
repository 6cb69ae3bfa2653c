// Command server runs the multi-tenant messaging service.
//
//	@title						Multi-tenant messaging service
//	@version					1.0
//	@description				Per-tenant message streams from an HTTP API, through RabbitMQ, into PostgreSQL.
//	@description				Errors are RFC 9457 problem details (application/problem+json).
//	@license.name				Proprietary
//	@license.url				https://msgsvc.dev/license
//	@BasePath					/
//	@tag.name					tenants
//	@tag.description			Tenants: each has its own partition, queues and worker pool.
//	@tag.name					messages
//	@tag.description			Publishing messages and reading them back, newest first.
//	@tag.name					dead-letters
//	@tag.description			A tenant's messages that could not be stored: look at them, replay them.
//	@tag.name					operations
//	@tag.description			Probes and metrics.
//	@securityDefinitions.apikey	BearerAuth
//	@in							header
//	@name						Authorization
//	@description				Type "Bearer " and the key: an admin key (ADMIN_API_KEYS) or a tenant's key (msk_…). Probes, metrics and these docs need none.
//	@tag.name					api-keys
//	@tag.description			Tenants' API keys: issue another for rotation, revoke one.
//	@externalDocs.description	Problem details (RFC 9457)
//	@externalDocs.url			https://www.rfc-editor.org/rfc/rfc9457
package main

import (
	"fmt"
	"os"

	"go.uber.org/fx"

	"github.com/acme/msgsvc/cmd/server/app"
	"github.com/acme/msgsvc/platform/config"
)

func main() {
	cfg, err := config.Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fx.New(app.Options(cfg)).Run()
}
