package console

import (
	"go.uber.org/fx"

	"github.com/acme/msgsvc/platform/httpserver"
)

// Module serves the operators' console at /console/.
var Module = fx.Module("console",
	fx.Provide(httpserver.AsRoutes(New)),
)
