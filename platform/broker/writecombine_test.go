package broker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// heldConn is a socket whose writes wait for a token on release (or for Close), so that a test decides when the
// writer's system call returns; it records each write.
type heldConn struct {
	net.Conn // nil: only Write and Close are called

	release   chan struct{}
	started   chan struct{} // one value per write that began
	closed    chan struct{}
	closeOnce sync.Once
	fail      error // returned by every write once released, when set

	mu     sync.Mutex
	writes [][]byte
}

func newHeldConn() *heldConn {
	return &heldConn{release: make(chan struct{}, 100), started: make(chan struct{}, 100), closed: make(chan struct{})}
}

func (h *heldConn) Write(p []byte) (int, error) {
	h.started <- struct{}{}
	select {
	case <-h.release:
	case <-h.closed:
		return 0, net.ErrClosed
	}
	if h.fail != nil {
		return 0, h.fail
	}
	h.mu.Lock()
	h.writes = append(h.writes, bytes.Clone(p))
	h.mu.Unlock()
	return len(p), nil
}

func (h *heldConn) Close() error {
	h.closeOnce.Do(func() { close(h.closed) })
	return nil
}

func (h *heldConn) recorded() [][]byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.writes)
}

func waitOrFail(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestWritesMadeDuringTheWritersSystemCallLeaveTogetherInTheNext(t *testing.T) {
	h := newHeldConn()
	c := newCombiningConn(h)
	defer c.Close()

	if _, err := c.Write([]byte("first.")); err != nil {
		t.Fatal(err)
	}
	waitOrFail(t, h.started, "the first system call")
	for _, s := range []string{"a.", "b.", "c."} { // the first system call is held: these queue
		if n, err := c.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	h.release <- struct{}{}
	waitOrFail(t, h.started, "the second system call")
	h.release <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for len(h.recorded()) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	got := h.recorded()
	if len(got) != 2 || string(got[0]) != "first." || string(got[1]) != "a.b.c." {
		t.Fatalf("system calls wrote %q, want [\"first.\" \"a.b.c.\"]", got)
	}
}

func TestConcurrentWritesArriveWholeAndInEachWritersOrder(t *testing.T) {
	client, server := net.Pipe()
	c := newCombiningConn(client)
	defer c.Close()
	const writers, records = 8, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range records {
				var rec [8]byte
				binary.BigEndian.PutUint32(rec[:4], uint32(w))
				binary.BigEndian.PutUint32(rec[4:], uint32(i))
				if _, err := c.Write(rec[:]); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	next := make([]uint32, writers)
	buf := make([]byte, 8)
	for range writers * records {
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatal(err)
		}
		w, i := binary.BigEndian.Uint32(buf[:4]), binary.BigEndian.Uint32(buf[4:])
		if w >= writers || i != next[w] {
			t.Fatalf("record %d of writer %d arrived where %d was due", i, w, next[w])
		}
		next[w]++
	}
	wg.Wait()
}

func TestAFailedWriteFailsTheWritesAfterItAndClosesTheSocket(t *testing.T) {
	h := newHeldConn()
	h.fail = errors.New("connection reset by peer")
	c := newCombiningConn(h)
	defer c.Close()
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatalf("the first Write only queues: %v", err)
	}
	waitOrFail(t, h.started, "the system call")
	h.release <- struct{}{}
	waitOrFail(t, h.closed, "the socket to close")
	if _, err := c.Write([]byte("next")); err == nil || err.Error() != "connection reset by peer" {
		t.Fatalf("Write after the failure: %v, want the write error", err)
	}
}

// A broker that stops reading (stuck, or its node cut off) fills what the conn may hold; the writers then wait, as
// on a full socket, holding no more than maxUnwritten, until the connection is closed (amqp091 does it when the
// heartbeats stop), which fails them.
func TestWritesWaitForRoomWhileThePeerReadsNothingUntilClose(t *testing.T) {
	h := newHeldConn()
	c := newCombiningConn(h)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitOrFail(t, h.started, "the first system call") // held for good
	chunk := make([]byte, 64<<10)
	for range maxUnwritten / len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	blocked := make(chan error, 1)
	go func() {
		_, err := c.Write(chunk)
		blocked <- err
	}()
	select {
	case err := <-blocked:
		t.Fatalf("a Write past %d queued bytes returned (%v); it must wait", maxUnwritten, err)
	case <-time.After(100 * time.Millisecond):
	}
	c.mu.Lock()
	held := len(c.pending)
	c.mu.Unlock()
	if held > maxUnwritten {
		t.Fatalf("%d bytes queued, more than %d", held, maxUnwritten)
	}
	_ = c.Close()
	select {
	case err := <-blocked:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("the waiting Write failed with %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close left a Write waiting")
	}
	waitOrFail(t, c.done, "the writer to return")
}
