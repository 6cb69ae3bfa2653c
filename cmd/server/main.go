// Command server runs the multi-tenant messaging service.
//
//	@title			Multi-tenant messaging service
//	@version		1.0
//	@description	Per-tenant message streams from an HTTP API, through RabbitMQ, into PostgreSQL.
//	@BasePath		/
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
