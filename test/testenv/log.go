package testenv

import (
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapcoreTee writes to the application's own logger (level-filtered) and to an observer.
func zapcoreTee(l *zap.Logger, observed zapcore.Core) zapcore.Core {
	return zapcore.NewTee(l.Core(), observed)
}
