// Package broker connects the service to RabbitMQ: a pool of reconnecting go-rabbitmq connections for
// consumers (ConsumerPool, sized from the negotiated channel_max), a connection for the publishers and the
// cluster relay, topology helpers over a separate administrative connection, the readiness probe, and the
// client of RabbitMQ's management HTTP API (Management).
package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Options configures the broker connection.
type Options struct {
	// URLs are the AMQP URLs of the broker, one per node of a cluster, tried in this order.
	URLs              []string
	ReconnectInterval time.Duration
	// ConnectionName is shown in RabbitMQ's management UI.
	ConnectionName string
}

// Conn is the service's connection to RabbitMQ. It reconnects by itself after a broker restart.
type Conn struct {
	*rabbitmq.Conn
	opts Options
	log  *zap.Logger

	adminMu sync.Mutex
	admin   *amqp.Connection

	probeMu sync.Mutex
	probes  []*amqp.Channel // idle channels of admin for InspectQueue

	waiting unanswered // queues with a call given up on (awaitAnswer)
}

// Dial connects to RabbitMQ; it fails when no node of opts.URLs answers now.
func Dial(opts Options, log *zap.Logger) (*Conn, error) {
	log = log.Named("broker")
	c, err := dialReconnecting(opts.URLs, opts.ConnectionName, opts.ReconnectInterval, log)
	if err != nil {
		return nil, err
	}
	return &Conn{Conn: c, opts: opts, log: log}, nil
}

// dialReconnecting opens a go-rabbitmq connection named name to the first of urls that answers, in order.
// When the connection is lost it reconnects by itself, every reconnectInterval or longer (backing off), again
// to the first of urls that answers: the loss of a cluster node moves it to another node.
func dialReconnecting(urls []string, name string, reconnectInterval time.Duration, log *zap.Logger) (*rabbitmq.Conn, error) {
	if len(urls) == 0 {
		return nil, errors.New("broker: connect: no AMQP URL")
	}
	cfg := rabbitmq.Config{Properties: amqp.Table{"connection_name": name}}
	c, err := rabbitmq.NewClusterConn(rabbitmq.NewStaticResolver(urls, false),
		rabbitmq.WithConnectionOptionsLogger(Logger(log)),
		rabbitmq.WithConnectionOptionsBaseReconnectInterval(reconnectInterval),
		rabbitmq.WithConnectionOptionsConfig(cfg),
	)
	if err != nil {
		return nil, fmt.Errorf("broker: connect: %w", err)
	}
	return c, nil
}

// dialFirst opens a plain amqp091 connection to the first of urls that answers, in order, within ctx's
// deadline (5 s without one), shared between the URLs still to try. cfg.Dial is set here; wrap, when not nil,
// wraps each socket it opens.
func dialFirst(ctx context.Context, urls []string, cfg amqp.Config, wrap func(net.Conn) net.Conn) (*amqp.Connection, error) {
	if len(urls) == 0 {
		return nil, errors.New("no AMQP URL")
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	var errs []error
	for i, u := range urls {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		cfg.Dial = amqp.DefaultDial(left / time.Duration(len(urls)-i))
		if wrap != nil {
			cfg.Dial = wrapDial(cfg.Dial, wrap)
		}
		conn, err := amqp.DialConfig(u, cfg)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("node %d: %w", i+1, err))
	}
	if len(errs) == 0 {
		errs = append(errs, context.DeadlineExceeded)
	}
	return nil, errors.Join(errs...)
}

// wrapDial returns dial with wrap applied to every socket it opens.
func wrapDial(dial func(network, addr string) (net.Conn, error), wrap func(net.Conn) net.Conn) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		c, err := dial(network, addr)
		if err != nil {
			return nil, err
		}
		return wrap(c), nil
	}
}

// ChannelMax returns the channel_max the broker negotiates for a connection (2,047 by default).
func (c *Conn) ChannelMax(ctx context.Context) (int, error) {
	conn, err := c.adminConn(ctx)
	if err != nil {
		return 0, err
	}
	return int(conn.Config.ChannelMax), nil
}

// Close closes the administrative connection and the shared connection.
func (c *Conn) Close() error {
	c.adminMu.Lock()
	if c.admin != nil {
		// Closes the probe channels too. A channel left to a call about a queue that does not answer
		// (awaitAnswer) holds RabbitMQ's answer to the connection's close: wait for it at most closeWait.
		_ = c.admin.CloseDeadline(time.Now().Add(closeWait))
		c.admin = nil
	}
	c.adminMu.Unlock()
	c.probeMu.Lock()
	c.probes = nil
	c.probeMu.Unlock()
	return c.Conn.Close()
}

// WithChannel runs fn on a fresh channel of the administrative connection, dialling it again when the
// broker restarted since. Errors that close the channel (a missing queue on a passive declare) are confined
// to that channel. It waits for fn as long as fn takes (it may do long work, such as moving a queue's messages):
// a single call about a queue that must not wait on a broker that does not answer goes through DeclareQueues,
// DeleteQueues, UnbindQueue or InspectQueue(s), which wait at most AnswerTimeout.
func (c *Conn) WithChannel(ctx context.Context, fn func(ch *amqp.Channel) error) error {
	conn, err := c.adminConn(ctx)
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("%w: open channel: %v", ErrUnavailable, err)
	}
	defer ch.Close()
	return fn(ch)
}

func (c *Conn) adminConn(ctx context.Context) (*amqp.Connection, error) {
	c.adminMu.Lock()
	defer c.adminMu.Unlock()
	if c.admin != nil && !c.admin.IsClosed() {
		return c.admin, nil
	}
	cfg := amqp.Config{Properties: amqp.Table{"connection_name": c.opts.ConnectionName + "-admin"}, Heartbeat: 10 * time.Second}
	conn, err := dialFirst(ctx, c.opts.URLs, cfg, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	c.admin = conn
	return conn, nil
}

// Ping reports whether the broker answers: it opens and closes a channel.
func (c *Conn) Ping(ctx context.Context) error {
	if c.IsClosed() {
		return errors.New("connection closed")
	}
	return c.WithChannel(ctx, func(*amqp.Channel) error { return nil })
}

// ErrUnavailable wraps every failure caused by the broker being unreachable or too slow.
var ErrUnavailable = errors.New("broker unavailable")

// Logger adapts zap to go-rabbitmq's logger; the library's chatty info lines are logged at debug level.
func Logger(log *zap.Logger) rabbitmq.Logger { return zapAdapter{log: log} }

type zapAdapter struct {
	log *zap.Logger
}

func (z zapAdapter) write(lvl zapcore.Level, f string, v []any) {
	if !z.log.Core().Enabled(lvl) {
		return
	}
	if ce := z.log.Check(lvl, fmt.Sprintf(f, v...)); ce != nil {
		ce.Write()
	}
}

func (z zapAdapter) Fatalf(f string, v ...any) { z.write(zapcore.ErrorLevel, f, v) }
func (z zapAdapter) Errorf(f string, v ...any) { z.write(zapcore.ErrorLevel, f, v) }
func (z zapAdapter) Warnf(f string, v ...any)  { z.write(zapcore.WarnLevel, f, v) }
func (z zapAdapter) Infof(f string, v ...any)  { z.write(zapcore.DebugLevel, f, v) }
func (z zapAdapter) Debugf(f string, v ...any) { z.write(zapcore.DebugLevel, f, v) }

// permanentError marks a failure that no retry can mend, such as an undecodable delivery.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent marks err as permanent: the delivery that caused it goes to the dead-letter queue at once.
func Permanent(err error) error { return permanentError{err} }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool { return errors.As(err, new(permanentError)) }

// InspectQueues passively declares every named queue and returns their states, and per queue the error that
// kept it from being inspected (nil for most), in the same order. It uses a few channels of the
// administrative connection for the whole list (a missing or locked queue closes its channel; the next declare
// opens another), so inspecting thousands of queues costs one round trip each, not a channel's open and close
// as well. A queue the broker does not answer about within AnswerTimeout (awaitAnswer) gets ErrUnanswered, and
// its lane goes on with a new channel: it costs the queues after it in its lane AnswerTimeout once, and the
// passes after that nothing while it stays unanswered. The error it returns itself means the broker did not
// answer at all.
func (c *Conn) InspectQueues(ctx context.Context, names []string) ([]QueueState, []error, error) {
	return c.InspectQueuesPaced(ctx, names, nil)
}

// InspectQueuesPaced is InspectQueues that calls pace before each declare (every lane), so that the caller sets
// the rate: an error it returns ends the inspection as ctx's end does. nil paces nothing.
func (c *Conn) InspectQueuesPaced(ctx context.Context, names []string, pace func(context.Context) error) ([]QueueState, []error, error) {
	const lanes = 4
	states := make([]QueueState, len(names))
	errs := make([]error, len(names))
	laneErrs := make([]error, lanes)
	var wg sync.WaitGroup
	for lane := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			laneErrs[lane] = c.inspectLane(ctx, names, states, errs, lane, lanes, pace)
		}()
	}
	wg.Wait()
	return states, errs, errors.Join(laneErrs...)
}

// inspectLane inspects names[lane], names[lane+step], ... into states and errs.
func (c *Conn) inspectLane(ctx context.Context, names []string, states []QueueState, errs []error, lane, step int,
	pace func(context.Context) error) error {
	var ch *amqp.Channel
	defer func() {
		if ch != nil {
			_ = ch.Close()
		}
	}()
	for i := lane; i < len(names); i += step {
		if pace != nil {
			if err := pace(ctx); err != nil {
				return fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if errs[i] = c.waiting.check(names[i : i+1]); errs[i] != nil {
			continue
		}
		if ch == nil || ch.IsClosed() {
			conn, err := c.adminConn(ctx)
			if err != nil {
				return err
			}
			if ch, err = conn.Channel(); err != nil {
				return fmt.Errorf("%w: open channel: %v", ErrUnavailable, err)
			}
		}
		st, abandoned, err := c.declarePassive(ctx, ch, names[i])
		if abandoned {
			ch = nil // left to the call; the next declare opens another
		}
		if err != nil {
			errs[i] = fmt.Errorf("inspect queue %s: %w", names[i], err)
			continue
		}
		states[i] = st
	}
	return nil
}

// declarePassive passively declares name on ch and waits for the answer as awaitAnswer does. A missing queue is
// no error: its state says so (the broker closed ch with its 404). abandoned reports that ch is left to the call.
func (c *Conn) declarePassive(ctx context.Context, ch *amqp.Channel, name string) (st QueueState, abandoned bool, err error) {
	var q amqp.Queue
	abandoned, err = c.awaitAnswer(ctx, name, ch, func() (err error) {
		q, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
		return err
	})
	var ae *amqp.Error
	switch {
	case abandoned:
		return QueueState{}, true, err
	case errors.As(err, &ae) && ae.Code == amqp.NotFound:
		return QueueState{}, false, nil
	case err != nil:
		return QueueState{}, false, err
	}
	return QueueState{Exists: true, Messages: q.Messages, Consumers: q.Consumers}, false, nil
}
