package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
)

// ErrUnroutable means a mandatory publish reached no queue: the broker returned it.
var ErrUnroutable = errors.New("no queue is bound for the routing key")

// ErrNotSent is wrapped (beside ErrUnavailable) by a publish error when nothing of the publish was handed to
// the connection: the broker cannot have the message, so sending it again cannot make a duplicate. An error
// without it may come after the message was handed over: the broker may have it and store it later.
var ErrNotSent = errors.New("not sent")

// ErrUnconfirmed is wrapped (beside ErrUnavailable, and ErrNotSent when nothing was sent) by a publish error when
// PublisherOptions.MaxUnconfirmed messages to the same exchange and routing key wait for RabbitMQ's confirm, those
// whose publishers gave up on them included.
var ErrUnconfirmed = errors.New("RabbitMQ has not confirmed earlier messages to the same queue")

// ErrBlocked is wrapped (beside ErrUnavailable) by a publish error when RabbitMQ blocks the publishing
// connection (connection.blocked: a memory or disk alarm). Publishes then fail at once instead of waiting
// for a broker that does not read them.
var ErrBlocked = errors.New("RabbitMQ blocks publishing (a memory or disk alarm)")

// Message is one publish: a persistent message with a message id and headers.
type Message struct {
	Exchange   string
	RoutingKey string
	MessageID  string
	Headers    map[string]any
	Body       []byte
	// Mandatory asks the broker to return the message when no queue takes it; Publish then answers
	// ErrUnroutable instead of success.
	Mandatory bool
}

// PublisherOptions configure a Publisher.
type PublisherOptions struct {
	// URLs are the broker nodes; a (re)connect tries them in turn, starting after the last one that failed.
	URLs []string
	// Name is the connection name shown in RabbitMQ's management UI.
	Name string
	// Channels is how many confirming channels the connection carries; publishes are spread over them.
	Channels int
	// Timeout bounds one Publish or PublishAll, waiting for a reconnect and retries included.
	Timeout time.Duration
	// ReconnectMax caps the backoff between reconnect attempts; the first attempt follows a loss at once,
	// the next ones after 100 ms, 200 ms, … up to ReconnectMax.
	ReconnectMax time.Duration
	// MaxUnconfirmed bounds the messages to one exchange and routing key that wait for their confirm, whether
	// their publisher still waits or gave up (0: no bound); a publish past it fails at once (ErrUnconfirmed).
	// RabbitMQ gives a channel credit for 400 messages to a queue that has not taken them: a classic queue whose
	// process does not answer blocks the channel after 400 messages to it, and the whole connection 400 messages
	// later, every tenant's publishes with it. Kept under 400, one queue never blocks a channel.
	MaxUnconfirmed int
}

// Publisher publishes persistent messages in confirm mode on its own AMQP connection, apart from the consumers'
// (RabbitMQ blocks publishing connections under flow control and memory alarms; consumers must keep draining
// then). It is safe for concurrent use, and many confirms are in flight at once on each channel: concurrent
// publishes share channels, and RabbitMQ confirms them together.
//
// A publish that fails because the connection or its channel went away (a broker restart, a node lost, a
// connection closed by an operator) waits for the reconnect and is sent again, within Timeout: storage is
// idempotent by message id, so a message that reached the queue twice is stored once. A publish the broker
// returned (mandatory, no queue) is never reported as a success: RabbitMQ sends basic.return before the
// basic.ack of the same message on the channel, and the publisher reads the returns that arrived before a
// confirm before it looks at the confirm.
type Publisher struct {
	opts PublisherOptions
	log  *zap.Logger
	next atomic.Uint64

	mu      sync.Mutex
	conn    *pubConn      // nil while disconnected
	ready   chan struct{} // closed when conn is set again after a loss
	closed  bool
	dialIdx int
	stop    chan struct{}
	wg      sync.WaitGroup

	unconfMu    sync.Mutex
	unconfirmed map[route]int // messages handed to a channel whose confirm has not come, per route
}

// route is where a message goes: an exchange and a routing key (one tenant's queue).
type route struct{ exchange, key string }

// reserve counts ms as unconfirmed, or none of them when a route would pass MaxUnconfirmed; a route with nothing
// unconfirmed takes any number.
func (p *Publisher) reserve(ms []Message) error {
	if p.opts.MaxUnconfirmed <= 0 {
		return nil
	}
	adding := make(map[route]int, 1)
	for _, m := range ms {
		adding[route{m.Exchange, m.RoutingKey}]++
	}
	p.unconfMu.Lock()
	defer p.unconfMu.Unlock()
	for r, k := range adding {
		if n := p.unconfirmed[r]; n > 0 && n+k > p.opts.MaxUnconfirmed {
			return fmt.Errorf("%w: %w: %d to %q with key %q wait for their confirm (the queue may not answer)",
				ErrUnavailable, ErrUnconfirmed, n, r.exchange, r.key)
		}
	}
	if p.unconfirmed == nil {
		p.unconfirmed = map[route]int{}
	}
	for r, k := range adding {
		p.unconfirmed[r] += k
	}
	return nil
}

// release takes ms out of the unconfirmed count: their confirm came, or they were not sent.
func (p *Publisher) release(ms []Message) {
	if p.opts.MaxUnconfirmed <= 0 || len(ms) == 0 {
		return
	}
	p.unconfMu.Lock()
	defer p.unconfMu.Unlock()
	for _, m := range ms {
		r := route{m.Exchange, m.RoutingKey}
		if p.unconfirmed[r]--; p.unconfirmed[r] <= 0 {
			delete(p.unconfirmed, r)
		}
	}
}

// releaseWhenConfirmed releases each message of ms that was sent (its confirm in confs is not nil: the others
// were released as they failed) once its confirm comes, or its channel closes, which ends every confirm still
// awaited. Its publisher gave up on them.
func (p *Publisher) releaseWhenConfirmed(ms []Message, confs []*amqp.DeferredConfirmation) {
	for i, dc := range confs {
		if dc == nil {
			break
		}
		<-dc.Done()
		p.release(ms[i : i+1])
	}
}

// pubConn is one connection with its confirming channels.
type pubConn struct {
	conn    *amqp.Connection
	chans   []*pubChan
	blocked chan amqp.Blocking // connection.blocked and connection.unblocked, read by watchBlocked

	blockMu   sync.Mutex
	blockedC  chan struct{} // closed while RabbitMQ blocks the connection; a fresh, open one while it does not
	isBlocked bool
}

// blockSignal returns a channel that is closed while the connection is blocked (already closed when it is
// blocked now).
func (pc *pubConn) blockSignal() <-chan struct{} {
	pc.blockMu.Lock()
	defer pc.blockMu.Unlock()
	return pc.blockedC
}

// setBlocked records a connection.blocked (on) or connection.unblocked (off).
func (pc *pubConn) setBlocked(on bool) {
	pc.blockMu.Lock()
	defer pc.blockMu.Unlock()
	switch {
	case on && !pc.isBlocked:
		close(pc.blockedC)
	case !on && pc.isBlocked:
		pc.blockedC = make(chan struct{})
	}
	pc.isBlocked = on
}

// watchBlocked follows the connection's blocked state until the connection closes (amqp091 then closes the
// notification channel). amqp091 hands the notifications over synchronously, so they must always be read.
func (p *Publisher) watchBlocked(pc *pubConn) {
	defer p.wg.Done()
	for b := range pc.blocked {
		pc.setBlocked(b.Active)
		if b.Active {
			p.log.Warn("RabbitMQ blocks the publishing connection; publishes fail at once until it unblocks", zap.String("reason", b.Reason))
		} else {
			p.log.Info("RabbitMQ unblocked the publishing connection")
		}
	}
}

// pubChan is one confirming channel and the returns it received.
type pubChan struct {
	ch        *amqp.Channel
	returns   chan amqp.Return
	replacing atomic.Bool // a replacement after a nack is under way

	mu       sync.Mutex
	returned map[string]int // message id → returns not yet claimed by their publisher
}

// NewPublisher connects a publisher; it fails when no broker node answers now.
func NewPublisher(opts PublisherOptions, log *zap.Logger) (*Publisher, error) {
	if len(opts.URLs) == 0 {
		return nil, errors.New("broker: publisher: no URL")
	}
	opts.Channels = max(opts.Channels, 1)
	if opts.ReconnectMax <= 0 {
		opts.ReconnectMax = time.Second
	}
	p := &Publisher{opts: opts, log: log.Named("publisher"), stop: make(chan struct{}), ready: make(chan struct{})}
	pc, err := p.dial()
	if err != nil {
		return nil, fmt.Errorf("broker: publisher: %w", err)
	}
	p.install(pc)
	return p, nil
}

// dial opens a connection to the next node that answers and its channels.
func (p *Publisher) dial() (*pubConn, error) {
	var errs []error
	for range p.opts.URLs {
		p.mu.Lock()
		url := p.opts.URLs[p.dialIdx%len(p.opts.URLs)]
		p.mu.Unlock()
		pc, err := p.dialURL(url)
		if err == nil {
			return pc, nil
		}
		errs = append(errs, err)
		p.mu.Lock()
		p.dialIdx++
		p.mu.Unlock()
	}
	return nil, fmt.Errorf("%w: %v", ErrUnavailable, errors.Join(errs...))
}

func (p *Publisher) dialURL(url string) (*pubConn, error) {
	conn, err := amqp.DialConfig(url, amqp.Config{
		Heartbeat: 10 * time.Second,
		Dial: wrapDial(amqp.DefaultDial(5*time.Second),
			func(c net.Conn) net.Conn { return newCombiningConn(c) }),
		Properties: amqp.Table{"connection_name": p.opts.Name},
	})
	if err != nil {
		return nil, err
	}
	pc := &pubConn{conn: conn, blocked: conn.NotifyBlocked(make(chan amqp.Blocking, 4)), blockedC: make(chan struct{})}
	for range p.opts.Channels {
		c, err := openPubChan(conn)
		if err != nil {
			_ = conn.Close()
			return nil, err
		}
		pc.chans = append(pc.chans, c)
	}
	return pc, nil
}

func openPubChan(conn *amqp.Connection) (*pubChan, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, err
	}
	c := &pubChan{ch: ch, returns: ch.NotifyReturn(make(chan amqp.Return, 1024)), returned: map[string]int{}}
	return c, nil
}

// install makes pc the current connection and watches it: when it closes, the publisher reconnects.
func (p *Publisher) install(pc *pubConn) {
	closed := pc.conn.NotifyClose(make(chan *amqp.Error, 1))
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = pc.conn.Close()
		return
	}
	p.conn = pc
	close(p.ready)
	p.wg.Add(2)
	p.mu.Unlock()
	go p.watchBlocked(pc)
	go func() {
		defer p.wg.Done()
		select {
		case err := <-closed:
			p.lost(pc, err)
		case <-p.stop:
		}
	}()
}

// lost forgets pc and reconnects with backoff: at once, then after 100 ms, 200 ms, … up to ReconnectMax.
func (p *Publisher) lost(pc *pubConn, cause *amqp.Error) {
	p.mu.Lock()
	if p.conn != pc || p.closed {
		p.mu.Unlock()
		return
	}
	p.conn = nil
	p.ready = make(chan struct{})
	p.dialIdx++ // the node we were on is the likeliest to be gone
	p.mu.Unlock()
	_ = pc.conn.Close()
	p.log.Warn("publishing connection lost; reconnecting", zap.Any("cause", cause))
	backoff := time.Duration(0)
	for attempt := 1; ; attempt++ {
		select {
		case <-p.stop:
			return
		case <-time.After(backoff):
		}
		npc, err := p.dial()
		if err == nil {
			p.install(npc)
			p.log.Info("publishing connection restored", zap.Int("attempts", attempt))
			return
		}
		if attempt == 1 || attempt%10 == 0 {
			p.log.Warn("publishing connection: reconnect failed; retrying", zap.Int("attempt", attempt), zap.Error(err))
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), p.opts.ReconnectMax)
	}
}

// channel returns a channel of the current connection and the connection, waiting for a reconnect until ctx
// ends. A channel that closed on its own (the connection is up) is reopened. While RabbitMQ blocks the
// connection it fails at once with ErrBlocked: a publish would only wait.
func (p *Publisher) channel(ctx context.Context) (*pubConn, *pubChan, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, nil, fmt.Errorf("%w: publisher closed", ErrUnavailable)
		}
		pc, ready := p.conn, p.ready
		if pc == nil {
			p.mu.Unlock()
			select {
			case <-ready:
				continue
			case <-ctx.Done():
				return nil, nil, fmt.Errorf("%w: not connected: %v", ErrUnavailable, context.Cause(ctx))
			}
		}
		select {
		case <-pc.blockSignal():
			p.mu.Unlock()
			return nil, nil, fmt.Errorf("%w: %w", ErrUnavailable, ErrBlocked)
		default:
		}
		i := int(p.next.Add(1) % uint64(len(pc.chans)))
		c := pc.chans[i]
		if !c.ch.IsClosed() {
			p.mu.Unlock()
			return pc, c, nil
		}
		if pc.conn.IsClosed() { // the watcher is about to reconnect
			p.mu.Unlock()
			select {
			case <-time.After(10 * time.Millisecond):
				continue
			case <-ctx.Done():
				return nil, nil, fmt.Errorf("%w: not connected: %v", ErrUnavailable, context.Cause(ctx))
			}
		}
		nc, err := openPubChan(pc.conn)
		if err == nil {
			pc.chans[i] = nc
		}
		p.mu.Unlock()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: open channel: %v", ErrUnavailable, err)
		}
		return pc, nc, nil
	}
}

// claimReturn reports whether the broker returned the message with id on c. It is called after the message's
// confirm arrived, and the return of a message precedes its confirm on the channel, so every return that
// matters has been put into c.returns by then: they are moved into the map first.
func (c *pubChan) claimReturn(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
drain:
	for {
		select {
		case r, ok := <-c.returns:
			if !ok { // the channel closed
				break drain
			}
			c.returned[r.MessageId]++
		default:
			break drain
		}
	}
	if c.returned[id] == 0 {
		return false
	}
	if c.returned[id]--; c.returned[id] == 0 {
		delete(c.returned, id)
	}
	return true
}

// Publish sends m and returns once the broker confirmed it; ErrUnroutable when the broker returned it; or an
// error wrapping ErrUnavailable when the broker is down, blocks publishing (ErrBlocked), nacks it or does not
// confirm within the timeout.
func (p *Publisher) Publish(ctx context.Context, m Message) error {
	return p.PublishAll(ctx, []Message{m})
}

// PublishAll sends every message on one channel, with their confirms in flight together, and returns once the
// broker confirmed them all (nil), or the first lasting failure. Messages whose publish failed with the
// connection or channel are sent again after a reconnect, within the timeout. On failure some messages may
// have been confirmed, unless the error wraps ErrNotSent.
//
// The caller's wait is bounded by ctx and the timeout even when the write itself cannot proceed (a broker that
// stopped reading the socket): the write then finishes, or fails with the connection, in the background.
func (p *Publisher) PublishAll(ctx context.Context, ms []Message) error {
	return p.publish(ctx, func() ([]Message, bool) { return ms, true })
}

// PublishBuilt publishes the message build returns, like Publish. build is called at most once, at the
// handover: when a channel of an unblocked connection is at hand, before the timeout and ctx ended, just
// before the message is written to the channel. Until then nothing is sent, and a publish that ends earlier
// (the timeout, ctx, a blocked or lost connection) returns an error wrapping ErrNotSent without calling build.
// When build answers false, nothing is sent either and the error wraps ErrNotSent. After build returned the
// message, it is sent (again after a reconnect) until it is confirmed or the time is up, and a failure may come
// after the broker took it.
//
// Unlike PublishAll it runs in the caller's goroutine (one hop less per publish): a write the broker does not
// read (a full socket buffer) can hold it past ctx, until the write proceeds or the connection fails. A caller
// that must answer on time waits apart, as the coalescer's requests do.
func (p *Publisher) PublishBuilt(ctx context.Context, build func() (Message, bool)) error {
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > p.opts.Timeout { // the coalescer's deadline is sooner
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.opts.Timeout)
		defer cancel()
	}
	var handover atomic.Int32
	return p.sendAll(ctx, &handover, func() ([]Message, bool) {
		m, ok := build()
		return []Message{m}, ok
	})
}

// Handover states of one publish (publish's handover).
const (
	handoverPending   int32 = iota // nothing was written yet
	handoverDone                   // the messages were built and are being written
	handoverAbandoned              // the caller gave up first: nothing may be written any more
)

// publish runs sendAll in the background and waits for it until ctx or the timeout ends; see PublishAll.
func (p *Publisher) publish(ctx context.Context, build func() ([]Message, bool)) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	var handover atomic.Int32
	done := make(chan error, 1)
	go func() { done <- p.sendAll(ctx, &handover, build) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select { // an answer that came together with the end of ctx wins
	case err := <-done:
		return err
	default:
	}
	if handover.CompareAndSwap(handoverPending, handoverAbandoned) {
		return fmt.Errorf("%w: %w: %v", ErrUnavailable, ErrNotSent, context.Cause(ctx))
	}
	return fmt.Errorf("%w: no confirm within %s: %v", ErrUnavailable, p.opts.Timeout, context.Cause(ctx))
}

// sendAll gets a channel, builds the messages at the handover and publishes them, again after a channel or
// connection failure, until they are all confirmed or ctx ends.
func (p *Publisher) sendAll(ctx context.Context, handover *atomic.Int32, build func() ([]Message, bool)) error {
	var todo []Message
	var last error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w: no confirm within %s: %v", ErrUnavailable, p.opts.Timeout, last)
			case <-time.After(min(time.Duration(attempt)*20*time.Millisecond, 200*time.Millisecond)):
			}
		}
		pc, c, err := p.channel(ctx)
		if err != nil {
			if handover.Load() != handoverDone {
				err = fmt.Errorf("%w: %w", err, ErrNotSent)
			}
			if last != nil {
				return fmt.Errorf("%w (before: %v)", err, last)
			}
			return err
		}
		if attempt == 0 {
			if ctx.Err() != nil || !handover.CompareAndSwap(handoverPending, handoverDone) {
				return fmt.Errorf("%w: %w: %v", ErrUnavailable, ErrNotSent, context.Cause(ctx))
			}
			ms, ok := build()
			if !ok {
				return fmt.Errorf("%w: %w: nothing left to send", ErrUnavailable, ErrNotSent)
			}
			todo = ms
		}
		var retry []Message
		retry, last, err = p.publishOn(ctx, pc, c, todo)
		if err != nil {
			if attempt == 0 && errors.Is(err, ErrUnconfirmed) {
				err = fmt.Errorf("%w: %w", err, ErrNotSent) // nothing of it was written
			}
			return err
		}
		if todo = retry; len(todo) == 0 {
			return nil
		}
	}
}

// publishOn publishes ms on c and waits for their confirms. It returns the messages to send again (the channel
// failed under them) with the reason, or a lasting error.
func (p *Publisher) publishOn(ctx context.Context, pc *pubConn, c *pubChan, ms []Message) (retry []Message, why error, err error) {
	for _, m := range ms {
		if err := amqp.Table(m.Headers).Validate(); err != nil {
			return nil, nil, fmt.Errorf("publish: headers: %w", err)
		}
	}
	if err := p.reserve(ms); err != nil {
		return nil, nil, err
	}
	confs := make([]*amqp.DeferredConfirmation, len(ms))
	for i, m := range ms {
		dc, perr := c.ch.PublishWithDeferredConfirm(m.Exchange, m.RoutingKey, m.Mandatory, false, amqp.Publishing{
			Headers: amqp.Table(m.Headers), ContentType: "application/json", DeliveryMode: amqp.Persistent,
			MessageId: m.MessageID, Body: m.Body,
		})
		if perr != nil || dc == nil {
			if perr == nil {
				perr = errors.New("channel not in confirm mode")
			}
			// The channel or connection is gone: this message and every later one go again.
			retry, why = append(retry, ms[i:]...), perr
			p.release(ms[i:])
			break
		}
		confs[i] = dc
	}
	blocked := pc.blockSignal()
	for i, dc := range confs {
		if dc == nil {
			break
		}
		select {
		case <-dc.Done():
		case <-ctx.Done():
			go p.releaseWhenConfirmed(slices.Clone(ms[i:]), confs[i:]) // the caller may reuse ms once this returns
			return nil, nil, fmt.Errorf("%w: no confirm within %s: %v", ErrUnavailable, p.opts.Timeout, context.Cause(ctx))
		case <-blocked:
			select {
			case <-dc.Done(): // the confirm came too
			default:
				// RabbitMQ blocked the connection before this confirm: it may still confirm (and store) the
				// message later.
				go p.releaseWhenConfirmed(slices.Clone(ms[i:]), confs[i:]) // the caller may reuse ms once this returns
				return nil, nil, fmt.Errorf("%w: %w: waiting for a confirm", ErrUnavailable, ErrBlocked)
			}
		}
		p.release(ms[i : i+1])
		if ms[i].Mandatory && c.claimReturn(ms[i].MessageID) {
			go p.releaseWhenConfirmed(slices.Clone(ms[i+1:]), confs[i+1:])
			return nil, nil, ErrUnroutable
		}
		if !dc.Acked() {
			// A nack (the broker could not take it) or the channel closed before the confirm: send it again, on
			// another channel: a channel that got a nack may keep getting them (below).
			retry, why = append(retry, ms[i]), errors.New("negative confirm (the channel closed or the broker nacked)")
			if !c.ch.IsClosed() {
				p.replace(c)
			}
		}
	}
	return retry, why, nil
}

// replace swaps c, which got a nack on an open channel, for a new channel of the same connection, in the
// background. RabbitMQ 3.10 nacks every publish on a channel whose first publish to a quorum queue came within
// about 0.4 s of the death of the queue leader's node, until that node is back (measured in a 3-node cluster:
// 20 of 20 publishes nacked on channels opened 2–158 ms after the kill, still 4 s later; none on channels
// opened 0.4 s or more after it). A new channel opened a moment later publishes normally. The replacement is
// opened 200 ms after the nack, and at most one at a time per channel.
func (p *Publisher) replace(c *pubChan) {
	if !c.replacing.CompareAndSwap(false, true) {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		select {
		case <-p.stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
		p.mu.Lock()
		pc := p.conn
		if pc == nil || p.closed || pc.conn.IsClosed() {
			p.mu.Unlock()
			return // the reconnect opens new channels
		}
		i := slices.Index(pc.chans, c)
		if i < 0 {
			p.mu.Unlock()
			return
		}
		nc, err := openPubChan(pc.conn)
		if err == nil {
			pc.chans[i] = nc
		}
		p.mu.Unlock()
		if err != nil {
			c.replacing.Store(false)
			p.log.Warn("could not replace a publishing channel that got a nack", zap.Error(err))
			return
		}
		// Publishes still waiting on the old channel get a nack from its close and are sent again.
		_ = c.ch.Close()
		p.log.Info("replaced a publishing channel that got a nack")
	}()
}

// Close stops reconnecting and closes the connection.
func (p *Publisher) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stop)
	pc := p.conn
	p.conn = nil
	p.mu.Unlock()
	if pc != nil {
		// RabbitMQ answers a connection's close once all its channels closed, and a channel that sent a message
		// to a queue that does not answer closes only after its channel operation timeout (15 s).
		_ = pc.conn.CloseDeadline(time.Now().Add(closeWait))
	}
	p.wg.Wait()
}

// closeWait bounds the wait for RabbitMQ's answer to a connection's close at shutdown; the socket closes then,
// and RabbitMQ cleans up after it.
const closeWait = time.Second
