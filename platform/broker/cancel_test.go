package broker_test

import (
	"fmt"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/platform/broker"
)

// go-rabbitmq reports a broker's basic.cancel only in its log: the watch calls back once for it and keeps every
// other line, a channel closed for a missing queue as a warning.
func TestWatchCancelCallsBackOnceForTheLibrarysCancelReport(t *testing.T) {
	var lines []string
	base := recordingLogger{lines: &lines}
	cancels := 0
	l := broker.WatchCancel(base, func() { cancels++ })
	l.Errorf("attempting to reconnect to amqp server after close with error: %v", "404")
	l.Errorf("attempting to reconnect to amqp server after close with error: %v",
		&amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no queue 'tenant.x'"})
	l.Errorf("attempting to reconnect to amqp server after cancel with error: %s", "replica-1/tenant.x/1234")
	l.Errorf("attempting to reconnect to amqp server after cancel with error: %s", "replica-1/tenant.x/1234")
	l.Warnf("successfully reconnected to amqp server after cancel")
	if cancels != 1 {
		t.Fatalf("onCancel ran %d times, want 1", cancels)
	}
	want := []string{"E attempting to reconnect to amqp server after close with error: 404",
		`W attempting to reconnect to amqp server after close with error: Exception (404) Reason: "NOT_FOUND - no queue 'tenant.x'"`,
		"W successfully reconnected to amqp server after cancel"}
	if fmt.Sprint(lines) != fmt.Sprint(want) {
		t.Fatalf("logged %q, want %q", lines, want)
	}
}

type recordingLogger struct{ lines *[]string }

func (r recordingLogger) add(level, f string, v []any) {
	*r.lines = append(*r.lines, level+" "+fmt.Sprintf(f, v...))
}
func (r recordingLogger) Fatalf(f string, v ...any) { r.add("F", f, v) }
func (r recordingLogger) Errorf(f string, v ...any) { r.add("E", f, v) }
func (r recordingLogger) Warnf(f string, v ...any)  { r.add("W", f, v) }
func (r recordingLogger) Infof(f string, v ...any)  { r.add("I", f, v) }
func (r recordingLogger) Debugf(f string, v ...any) { r.add("D", f, v) }
