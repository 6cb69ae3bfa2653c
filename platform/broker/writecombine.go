package broker

import (
	"net"
	"sync"
)

// maxUnwritten bounds what a combiningConn holds that its writer has not taken yet; a Write past it waits for
// the writer, as a write into a full socket buffer would.
const maxUnwritten = 1 << 20

// maxKeptBuffer is the largest buffer a combiningConn keeps for its next round; a larger one (a burst) is left
// to the garbage collector.
const maxKeptBuffer = 64 << 10

// combiningConn is an AMQP connection's socket whose writes go out from one writer goroutine: a Write copies its
// bytes into a buffer and returns, and the writer sends all the buffer holds in one system call.
//
// amqp091 writes and flushes every publish, ack and confirm on its own, under the connection's lock, so each is a
// write system call of its own, and a TCP segment that wakes the broker's reader for it alone. Through a
// combiningConn, what other goroutines write while the writer's system call is under way leaves in the next one:
// in scenario 1 of test/bench, 2.4 of amqp091's writes per system call, and RabbitMQ's CPU per message 6.8 % lower
// (test/bench/README.md, "Combined writes").
//
// A write error is kept: every Write after it fails with it, and the socket is closed, which ends amqp091's
// reader and so the connection. That a Write returned is thus no proof that its bytes left, which amqp091 never
// assumes (a publish counts once its confirm is back; Publisher treats a publish on a lost connection as possibly
// sent). Deadlines (amqp091 bounds its handshake and its close with them) reach the writer's system calls.
type combiningConn struct {
	net.Conn

	mu      sync.Mutex
	room    sync.Cond // broadcast when the writer takes the buffer, a write fails or the conn closes
	pending []byte    // written, not yet taken by the writer
	spare   []byte    // the writer's last buffer, emptied, for the next round
	err     error     // the first write error
	closed  bool

	kick      chan struct{} // a Write added bytes
	stop      chan struct{} // closed by Close
	closeOnce sync.Once
	done      chan struct{} // closed when the writer has returned
}

// newCombiningConn wraps c and starts its writer, which runs until the returned conn is closed or a write fails.
func newCombiningConn(c net.Conn) *combiningConn {
	cc := &combiningConn{Conn: c, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	cc.room.L = &cc.mu
	go cc.run()
	return cc
}

// Write queues p for the writer; it waits while maxUnwritten bytes are queued. It fails once a write failed or
// the conn closed.
func (c *combiningConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && !c.closed && len(c.pending) >= maxUnwritten {
		c.room.Wait()
	}
	if err := c.failure(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	c.pending = append(c.pending, p...)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // the writer is kicked already and has not taken the buffer yet: it will take p with it
	}
	return len(p), nil
}

// failure is why no Write can succeed any more, or nil; c.mu is held.
func (c *combiningConn) failure() error {
	switch {
	case c.err != nil:
		return c.err
	case c.closed:
		return net.ErrClosed
	}
	return nil
}

// run is the writer: it sends what is queued until the conn closes or a write fails, which closes the socket.
func (c *combiningConn) run() {
	defer close(c.done)
	for {
		select {
		case <-c.kick:
		case <-c.stop:
			return
		}
		for {
			c.mu.Lock()
			if len(c.pending) == 0 || c.failure() != nil {
				c.mu.Unlock()
				break
			}
			buf := c.pending
			c.pending, c.spare = c.spare[:0], nil
			c.room.Broadcast()
			c.mu.Unlock()

			_, err := c.Conn.Write(buf)

			c.mu.Lock()
			if cap(buf) <= maxKeptBuffer {
				c.spare = buf[:0]
			}
			if err != nil {
				if c.err == nil {
					c.err = err
				}
				c.room.Broadcast()
				c.mu.Unlock()
				_ = c.Conn.Close()
				return
			}
			c.mu.Unlock()
		}
	}
}

// Close closes the socket at once: what the writer has not sent yet is dropped (amqp091 closes the socket after
// the broker answered its connection.close, so nothing it still needs is queued then). Writes waiting for room
// fail.
func (c *combiningConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.room.Broadcast()
	c.mu.Unlock()
	c.closeOnce.Do(func() { close(c.stop) })
	return c.Conn.Close()
}
