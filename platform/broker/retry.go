package broker

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// Retry runs f until it succeeds or ctx ends, waiting 100 ms, 200 ms, … up to 2 s between attempts, and
// returns f's last error when ctx ends first. It is for starting consumers: RabbitMQ may refuse a start for a
// moment (3.10 closes the whole connection when a consume reaches a quorum queue another replica declared
// an instant before, whose leader is not running yet) while the connection heals by itself.
func Retry(ctx context.Context, log *zap.Logger, what string, f func(context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		log.Warn(what+" failed; trying again", zap.Duration("in", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}
