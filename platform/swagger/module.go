package swagger

import (
	"go.uber.org/fx"

	apidocs "github.com/acme/msgsvc/api-docs"
	"github.com/acme/msgsvc/platform/httpserver"
)

// Module serves Swagger UI for the generated api-docs at /swagger/index.html.
var Module = fx.Module("swagger",
	fx.Provide(httpserver.AsRoutes(func() *Handlers { return New(apidocs.SwaggerInfo) })),
)
