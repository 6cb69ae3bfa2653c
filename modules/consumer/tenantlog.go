package consumer

import (
	"github.com/google/uuid"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// tenantLog is the runtime's logger with the tenant's id added to each line as it is written. A logger derived
// with zap's With would keep an encoder with a buffer of its own for every tenant for the consumer's life (about
// 1 kB each), where a tenant consumer logs only when it starts, stops or fails.
type tenantLog struct {
	base *zap.Logger
	id   uuid.UUID
}

func (l tenantLog) field() zap.Field { return zap.String("tenant_id", l.id.String()) }

func (l tenantLog) write(lvl zapcore.Level, msg string, fields []zap.Field) {
	if ce := l.base.Check(lvl, msg); ce != nil {
		ce.Write(append([]zap.Field{l.field()}, fields...)...)
	}
}

// Debug logs msg at debug level with the tenant's id and fields.
func (l tenantLog) Debug(msg string, fields ...zap.Field) { l.write(zapcore.DebugLevel, msg, fields) }

// Info logs msg at info level with the tenant's id and fields.
func (l tenantLog) Info(msg string, fields ...zap.Field) { l.write(zapcore.InfoLevel, msg, fields) }

// Warn logs msg at warn level with the tenant's id and fields.
func (l tenantLog) Warn(msg string, fields ...zap.Field) { l.write(zapcore.WarnLevel, msg, fields) }

// Error logs msg at error level with the tenant's id and fields.
func (l tenantLog) Error(msg string, fields ...zap.Field) { l.write(zapcore.ErrorLevel, msg, fields) }
