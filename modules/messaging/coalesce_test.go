package messaging

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/broker"
)

// publishCall is one publish the coalescers asked for; the test plays the publisher: it takes the items (the
// handover) when it chooses and answers with result.
type publishCall struct {
	ctx    context.Context
	take   func() ([]broker.EnvelopeItem, bool)
	result chan error
}

// coalBundle is a coalescers whose publishes the test answers, and a signal per caller queued.
type coalBundle struct {
	cs     *coalescers
	calls  chan *publishCall
	queued chan struct{}
	tenant uuid.UUID
}

func setupCoalescers(t *testing.T, maxPending int) *coalBundle {
	t.Helper()
	b := &coalBundle{calls: make(chan *publishCall), queued: make(chan struct{}, 1024), tenant: uuid.New()}
	b.cs = newCoalescers(0, maxPending, time.Minute, func(ctx context.Context, _ uuid.UUID, take func() ([]broker.EnvelopeItem, bool)) error {
		c := &publishCall{ctx: ctx, take: take, result: make(chan error, 1)}
		b.calls <- c
		return <-c.result
	}, nil)
	b.cs.queued = func() { b.queued <- struct{}{} }
	return b
}

// send starts a publish of one message named by n and returns its answer channel, once the caller is queued.
func (b *coalBundle) send(t *testing.T, ctx context.Context, n byte) <-chan error {
	t.Helper()
	out := make(chan error, 1)
	go func() {
		out <- b.cs.send(ctx, b.tenant, []broker.EnvelopeItem{{ID: uuid.UUID{n}, Payload: []byte{'0' + n}}})
	}()
	select {
	case <-b.queued:
	case err := <-out: // refused without queueing
		out2 := make(chan error, 1)
		out2 <- err
		return out2
	}
	return out
}

func (b *coalBundle) next(t *testing.T) *publishCall {
	t.Helper()
	select {
	case c := <-b.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no publish came")
		return nil
	}
}

func ids(items []broker.EnvelopeItem) []byte {
	var out []byte
	for _, it := range items {
		out = append(out, it.ID[0])
	}
	return out
}

func answer(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the caller was not answered")
		return nil
	}
}

// A caller whose request ends while its message waits for the tenant's publish in flight is answered at once,
// "not sent", and its message is never published; the others still go.
func TestCoalescerCancelledBeforeHandoverIsNeverSent(t *testing.T) {
	b := setupCoalescers(t, 0)
	first := b.send(t, context.Background(), 1)
	inFlight := b.next(t)
	items, ok := inFlight.take()
	require.True(t, ok)
	require.Equal(t, []byte{1}, ids(items))

	ctx, cancel := context.WithCancel(context.Background())
	gone := b.send(t, ctx, 2)
	stays := b.send(t, context.Background(), 3)
	cancel()
	err := answer(t, gone)
	require.ErrorIs(t, err, broker.ErrNotSent)
	require.ErrorIs(t, err, broker.ErrUnavailable)

	inFlight.result <- nil
	require.NoError(t, answer(t, first))
	env := b.next(t)
	items, ok = env.take()
	require.True(t, ok)
	require.Equal(t, []byte{3}, ids(items), "the cancelled message must not be in the next envelope")
	env.result <- nil
	require.NoError(t, answer(t, stays))
}

// A caller whose envelope was taken but not yet handed over (the publisher waits for a channel) and who leaves
// is left out at the handover; when every caller of an envelope left, its publish is cancelled and sends
// nothing.
func TestCoalescerLeftBeforeTheWriteIsLeftOut(t *testing.T) {
	b := setupCoalescers(t, 0)
	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	first := b.send(t, ctx1, 1)
	call := b.next(t) // taken by the flusher, not handed over
	second := b.send(t, ctx2, 2)
	cancel1()
	require.ErrorIs(t, answer(t, first), broker.ErrNotSent)

	// The second caller is queued behind the first's envelope and leaves too.
	cancel2()
	require.ErrorIs(t, answer(t, second), broker.ErrNotSent)
	select {
	case <-call.ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the publish of an envelope whose callers all left was not cancelled")
	}
	_, ok := call.take()
	require.False(t, ok, "nothing may be handed over once every caller left")
	call.result <- broker.ErrNotSent
}

// A caller who leaves after the handover is told the message may still be stored (no ErrNotSent).
func TestCoalescerLeftAfterHandoverMayBeStored(t *testing.T) {
	b := setupCoalescers(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	first := b.send(t, ctx, 1)
	call := b.next(t)
	_, ok := call.take()
	require.True(t, ok)
	cancel()
	err := answer(t, first)
	require.ErrorIs(t, err, broker.ErrUnavailable)
	require.NotErrorIs(t, err, broker.ErrNotSent)
	call.result <- nil
}

// At most maxPending callers of a tenant wait behind its publish in flight; the next is refused at once and
// the refused message is never sent.
func TestCoalescerPendingBound(t *testing.T) {
	b := setupCoalescers(t, 2)
	first := b.send(t, context.Background(), 1)
	call := b.next(t)
	_, ok := call.take()
	require.True(t, ok)
	w2 := b.send(t, context.Background(), 2)
	w3 := b.send(t, context.Background(), 3)
	err := answer(t, b.send(t, context.Background(), 4))
	require.ErrorIs(t, err, errPendingFull)
	require.ErrorIs(t, err, broker.ErrNotSent)

	call.result <- nil
	require.NoError(t, answer(t, first))
	env := b.next(t)
	items, ok := env.take()
	require.True(t, ok)
	require.Equal(t, []byte{2, 3}, ids(items))
	env.result <- nil
	require.NoError(t, answer(t, w2))
	require.NoError(t, answer(t, w3))
}

// An envelope's publish may last until the latest deadline of its callers, no longer: a publish never outlives
// every request it carries.
func TestCoalescerPublishDeadlineIsItsCallersLatest(t *testing.T) {
	b := setupCoalescers(t, 0)
	first := b.send(t, context.Background(), 1)
	call := b.next(t)
	_, ok := call.take()
	require.True(t, ok)
	base := time.Now().Add(time.Hour)
	ctxA, cancelA := context.WithDeadline(context.Background(), base)
	defer cancelA()
	ctxB, cancelB := context.WithDeadline(context.Background(), base.Add(time.Minute))
	defer cancelB()
	a := b.send(t, ctxA, 2)
	bb := b.send(t, ctxB, 3)
	call.result <- nil
	require.NoError(t, answer(t, first))
	env := b.next(t)
	d, ok := env.ctx.Deadline()
	require.True(t, ok)
	require.Equal(t, base.Add(time.Minute), d)
	_, ok = env.take()
	require.True(t, ok)
	env.result <- nil
	require.NoError(t, answer(t, a))
	require.NoError(t, answer(t, bb))
}

// A publish that failed before the handover (RabbitMQ blocks publishing) answers every caller of the envelope
// at once, "not sent", instead of leaving them to their deadlines.
func TestCoalescerFailureBeforeHandoverAnswersAtOnce(t *testing.T) {
	b := setupCoalescers(t, 0)
	first := b.send(t, context.Background(), 1)
	call := b.next(t)
	call.result <- errors.Join(broker.ErrUnavailable, broker.ErrBlocked, broker.ErrNotSent)
	err := answer(t, first)
	require.ErrorIs(t, err, broker.ErrBlocked)
	require.ErrorIs(t, err, broker.ErrNotSent)
}
