package periodic

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLoopRunsUntilStopped(t *testing.T) {
	var runs, errs atomic.Int32
	l := Start(5*time.Millisecond, func(ctx context.Context) error {
		_, ok := ctx.Deadline()
		require.True(t, ok, "each run has a deadline")
		runs.Add(1)
		return errors.New("boom")
	}, func(error) { errs.Add(1) })
	require.Eventually(t, func() bool { return runs.Load() >= 3 }, time.Second, time.Millisecond)
	l.Stop()
	n := runs.Load()
	time.Sleep(20 * time.Millisecond)
	require.Equal(t, n, runs.Load(), "no run after Stop")
	require.Equal(t, n, errs.Load())
	(*Loop)(nil).Stop()
}
