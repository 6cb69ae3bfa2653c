package events

import "go.uber.org/fx"

// Module provides the application's single *Bus.
var Module = fx.Module("events", fx.Provide(NewBus))
