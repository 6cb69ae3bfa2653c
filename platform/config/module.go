package config

import "go.uber.org/fx"

// Module supplies c to the application; main passes Load's result, tests pass their own.
func Module(c Config) fx.Option { return fx.Module("config", fx.Supply(c)) }
