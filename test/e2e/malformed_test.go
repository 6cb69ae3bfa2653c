package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/test/testenv"
)

// malformed is one bad request and the status it must get.
type malformed struct {
	name        string
	method      string
	path        string
	body        []byte
	contentType string // "-" sends no Content-Type
	chunked     bool   // send the body without a Content-Length
	status      int
}

// send sends m with the admin key and returns the status, or an error when no answer came.
func (m malformed) send(client *http.Client, baseURL string) (int, error) {
	var body io.Reader
	if m.body != nil {
		body = bytes.NewReader(m.body)
		if m.chunked {
			body = io.MultiReader(body) // hides the length: sent chunked
		}
	}
	req, err := http.NewRequest(m.method, baseURL+m.path, body)
	if err != nil {
		return 0, err
	}
	switch m.contentType {
	case "":
		req.Header.Set("Content-Type", "application/json")
	case "-":
	default:
		req.Header.Set("Content-Type", m.contentType)
	}
	req.Header.Set("Authorization", "Bearer "+testenv.AdminKey)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// malformedRequests builds the flood: oversized, truncated, wrong media type, deeply nested, invalid UTF-8,
// huge numbers, NUL bytes, for every endpoint that takes a body or parameters.
func malformedRequests(tenant string) []malformed {
	pub := func(payload string) []byte { return []byte(`{"tenant_id":"` + tenant + `","payload":` + payload + `}`) }
	batch := func(payload string) []byte {
		return []byte(`{"tenant_id":"` + tenant + `","messages":[{"payload":{"ok":1}},{"payload":` + payload + `}]}`)
	}
	deep := strings.Repeat("[", 100_000)
	deepObject := strings.Repeat(`{"a":`, 40_000) + "1" + strings.Repeat("}", 40_000) // 200 KB, within the limit
	hugeInt := "1" + strings.Repeat("0", 131_072)                                     // one digit more than numeric takes
	big := strings.Repeat("a", 300<<10)
	valid := pub(`{"a":1}`)
	var ms []malformed
	add := func(name, method, path string, body []byte, contentType string, status int) {
		ms = append(ms, malformed{name: name, method: method, path: path, body: body, contentType: contentType, status: status})
	}
	const (
		messages = "/api/v1/messages"
		batchURL = "/api/v1/messages/batch"
		tenants  = "/api/v1/tenants"
	)
	resize := tenants + "/" + tenant + "/config/concurrency"
	rate := tenants + "/" + tenant + "/config/rate-limit"

	// Oversized.
	add("publish oversized", "POST", messages, pub(`{"x":"`+big+`"}`), "", 413)
	ms = append(ms, malformed{name: "publish oversized chunked", method: "POST", path: messages, body: pub(`{"x":"` + big + `"}`), chunked: true, status: 413})
	hugeBatch := []byte(`{"tenant_id":"` + tenant + `","messages":[{"payload":{"x":"` + strings.Repeat("b", 9<<20) + `"}}]}`)
	add("batch oversized", "POST", batchURL, hugeBatch, "", 413)
	ms = append(ms, malformed{name: "batch oversized chunked", method: "POST", path: batchURL, body: hugeBatch, chunked: true, status: 413})
	add("create oversized", "POST", tenants, []byte(`{"name":"`+big+`"}`), "", 413)
	add("resize oversized", "PUT", resize, []byte(`{"workers":2,"pad":"`+big+`"}`), "", 413)
	add("batch of 1001", "POST", batchURL, []byte(`{"tenant_id":"`+tenant+`","messages":[`+strings.Repeat(`{"payload":{}},`, 1000)+`{"payload":{}}]}`), "", 400)

	// Truncated.
	for i, b := range [][]byte{valid, batch(`{"a":1}`), []byte(`{"name":"t","concurrency_config":2}`)} {
		path := []string{messages, batchURL, tenants}[i]
		add(fmt.Sprintf("truncated %s", path), "POST", path, b[:len(b)/2], "", 400)
	}
	add("empty body", "POST", messages, []byte{}, "", 400)
	add("resize truncated", "PUT", resize, []byte(`{"workers":`), "", 400)

	// Wrong media type.
	for _, ct := range []string{"text/plain", "application/xml", "multipart/form-data; boundary=x", "-", "application/json;;;", "application/jsonx"} {
		add("publish as "+ct, "POST", messages, valid, ct, 415)
		add("create as "+ct, "POST", tenants, []byte(`{"name":"t"}`), ct, 415)
	}
	add("batch as form", "POST", batchURL, batch(`{}`), "application/x-www-form-urlencoded", 415)

	// Deep nesting.
	add("publish nested 100k arrays", "POST", messages, pub(deep), "", 400)
	add("publish nested 40k objects", "POST", messages, pub(deepObject), "", 400)
	add("body nested 100k arrays", "POST", messages, []byte(deep), "", 400)
	add("batch nested", "POST", batchURL, batch(deep), "", 400)
	add("create nested", "POST", tenants, []byte(`{"name":`+deep), "", 400)

	// Invalid UTF-8 (a bad byte, a truncated sequence, an overlong encoding, a UTF-8-encoded surrogate).
	for _, bad := range []string{"\xff", "\xc3\x28", "\xc0\xaf", "\xed\xa0\x80"} {
		q := fmt.Sprintf("%q", bad)
		add("publish payload "+q, "POST", messages, pub(`{"s":"`+bad+`"}`), "", 400)
		add("publish tenant_id "+q, "POST", messages, []byte(`{"tenant_id":"`+tenant+bad+`","payload":{}}`), "", 400)
		add("batch payload "+q, "POST", batchURL, batch(`{"s":"`+bad+`"}`), "", 400)
		add("create name "+q, "POST", tenants, []byte(`{"name":"acme`+bad+`"}`), "", 400)
	}
	add("publish lone surrogate escape", "POST", messages, pub(`{"s":"\ud800"}`), "", 400)
	add("batch lone surrogate escape", "POST", batchURL, batch(`["\udc00"]`), "", 400)

	// Huge numbers.
	for _, n := range []string{"1e1000000", "-1e1000000", "1e-20000", "0.1e-16383", hugeInt} {
		label := n
		if len(label) > 20 {
			label = label[:10] + "…"
		}
		add("publish number "+label, "POST", messages, pub(`{"n":`+n+`}`), "", 400)
		add("batch number "+label, "POST", batchURL, batch(`[`+n+`]`), "", 400)
	}
	for _, n := range []string{"1e400", "99999999999999999999", "-1", "0", "1.5", "1e2"} {
		add("create concurrency "+n, "POST", tenants, []byte(`{"name":"t","concurrency_config":`+n+`}`), "", 400)
		add("resize workers "+n, "PUT", resize, []byte(`{"workers":`+n+`}`), "", 400)
	}
	add("publish tenant_id number", "POST", messages, []byte(`{"tenant_id":1e400,"payload":{}}`), "", 400)
	add("rate limit 1e400", "PUT", rate, []byte(`{"messages_per_second":1e400}`), "", 400)
	add("rate limit 1e10", "PUT", rate, []byte(`{"messages_per_second":1e10}`), "", 400)
	add("rate limit negative", "PUT", rate, []byte(`{"messages_per_second":-5}`), "", 400)

	// NUL bytes.
	add("publish raw NUL", "POST", messages, append(pub(`{"a":1}`), 0), "", 400)
	add("publish NUL in string", "POST", messages, pub("{\"a\":\"x\x00y\"}"), "", 400)
	add("publish escaped NUL", "POST", messages, pub(`{"a":"\u0000"}`), "", 400)
	add("publish NUL key", "POST", messages, pub(`{"\u0000":1}`), "", 400)
	add("batch escaped NUL", "POST", batchURL, batch(`["\u0000"]`), "", 400)
	add("create escaped NUL", "POST", tenants, []byte(`{"name":"a\u0000b"}`), "", 400)
	add("create raw NUL", "POST", tenants, []byte("{\"name\":\"a\x00b\"}"), "", 400)
	add("tenant_id NUL", "POST", messages, []byte(`{"tenant_id":"\u0000","payload":{}}`), "", 400)

	// Not the expected JSON at all.
	for _, b := range []string{`null`, `[]`, `"text"`, `{}`, `{"tenant_id":null,"payload":{}}`, `{"payload":{}} {"payload":{}}`} {
		add("publish "+b, "POST", messages, []byte(b), "", 400)
	}

	// Query strings and paths.
	for _, q := range []string{"cursor=0000-01-01T00:00:00Z", "cursor=0001-01-01T00:00:00%2B01:00", "cursor=%00", "cursor=%FF%FE",
		"cursor=" + strings.Repeat("A", 10000), "limit=1e2", "limit=99999999999999999999", "limit=%00"} {
		add("list messages "+q[:min(len(q), 30)], "GET", messages+"?tenant_id="+tenant+"&"+q, nil, "-", 400)
		add("list tenants "+q[:min(len(q), 30)], "GET", tenants+"?"+q, nil, "-", 400)
	}
	add("list messages tenant %FF", "GET", messages+"?tenant_id=%FF", nil, "-", 400)
	add("get tenant %FF", "GET", tenants+"/%FF", nil, "-", 400)
	add("get tenant NUL", "GET", tenants+"/%00", nil, "-", 400)
	add("delete tenant braces", "DELETE", tenants+"/%7B"+tenant+"%7D", nil, "-", 400)
	add("resize tenant 1e400", "PUT", tenants+"/1e400/config/concurrency", []byte(`{"workers":2}`), "", 400)
	return ms
}

// TestMalformedRequestFlood sends a flood of malformed requests from several clients at once to a running
// service: each gets its 4xx, the service stays ready throughout, nothing is stored or dead-lettered and no
// tenant is made, and a valid message afterwards is still accepted and stored.
func TestMalformedRequestFlood(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()
	tenant := a.CreateTenant("flood-target", 2)
	tid := uuid.MustParse(tenant)
	tenantsBefore := testenv.Count(t, db, "SELECT count(*) FROM tenants")

	requests := malformedRequests(tenant)
	const rounds = 3
	var (
		mu       sync.Mutex
		failures []string
		sent     int
		wg       sync.WaitGroup
		stop     = make(chan struct{})
		notReady []int
	)
	work := make(chan malformed)
	client := &http.Client{Timeout: 60 * time.Second}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				status, err := m.send(client, a.URL)
				mu.Lock()
				sent++
				switch {
				case err != nil:
					failures = append(failures, fmt.Sprintf("%s: no answer: %v", m.name, err))
				case status != m.status:
					failures = append(failures, fmt.Sprintf("%s: %d, want %d", m.name, status, m.status))
				}
				mu.Unlock()
			}
		}()
	}
	monitor := make(chan struct{})
	go func() {
		defer close(monitor)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if st := testenv.Status(a.URL + "/readyz"); st != http.StatusOK {
				mu.Lock()
				notReady = append(notReady, st)
				mu.Unlock()
			}
		}
	}()
	start := time.Now()
	for range rounds {
		for _, m := range requests {
			work <- m
		}
	}
	close(work)
	wg.Wait()
	close(stop)
	<-monitor
	took := time.Since(start)

	require.Empty(t, failures, "%d of %d malformed requests were not answered as expected", len(failures), sent)
	require.Empty(t, notReady, "/readyz was not 200 during the flood")
	require.Equal(t, http.StatusOK, testenv.Status(a.URL+"/readyz"))

	time.Sleep(500 * time.Millisecond) // whatever a bad request might have queued would be stored by now
	require.Zero(t, testenv.Count(t, db, "SELECT count(*) FROM messages"), "a malformed request stored a message")
	require.Equal(t, tenantsBefore, testenv.Count(t, db, "SELECT count(*) FROM tenants"), "a malformed request made a tenant")
	_, queued, _ := testenv.QueueState(t, a.Config.AMQPURL, consumer.QueueName(tid))
	dead := testenv.Count(t, db, "SELECT count(*) FROM dead_letters")
	require.Zero(t, queued+dead, "a malformed request reached the broker")

	id := a.Publish(tenant, map[string]any{"after": "flood"})
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(id)) == 1
	}, "a valid message after the flood is not stored")
	t.Logf("%d malformed requests (%d kinds × %d rounds, 8 clients) in %s: each answered its 4xx; service stayed ready; nothing stored",
		sent, len(requests), rounds, took.Round(time.Millisecond))
}

// TestUnstorableDirectPublishIsDeadLetteredAlone publishes straight to RabbitMQ, among good messages that land
// in the same store batch, one that PostgreSQL refuses (a trigger the test adds raises a data exception) and
// one whose creation time the API could not write (x-created-at in 250 BC, which PostgreSQL would store): the
// good ones are stored at once, and only the two bad ones are dead-lettered, without retries.
func TestUnstorableDirectPublishIsDeadLetteredAlone(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	a := testenv.Start(t, cfg)
	db := a.DB()
	tenant := a.CreateTenant("unstorable", 1)
	tid := uuid.MustParse(tenant)
	require.NoError(t, a.Stop()) // publish while nothing consumes, so that the consumer takes them in one batch
	// PostgreSQL refusing a value (SQLSTATE class 22, data exception), as it would a number or time it cannot
	// represent: decodeDelivery catches those the service knows of first.
	for _, ddl := range []string{`CREATE FUNCTION refuse_i_10() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.payload->>'i' = '10' THEN RAISE EXCEPTION 'the test refuses i = 10' USING ERRCODE = '22023'; END IF;
	RETURN NEW;
END $$`, `CREATE TRIGGER refuse_i_10 BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_i_10()`} {
		_, err := db.Exec(context.Background(), ddl)
		require.NoError(t, err)
	}

	refused, ancient := uuid.NewString(), uuid.NewString()
	for i := range 20 {
		id, headers := uuid.NewString(), amqp.Table{}
		switch i {
		case 10:
			id = refused
		case 15:
			id, headers = ancient, amqp.Table{messaging.HeaderCreatedAt: int64(-70_000_000_000_000_000)} // about 250 BC
		}
		publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, id, []byte(fmt.Sprintf(`{"i":%d}`, i)), headers)
	}
	b := testenv.Start(t, cfg)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == 18
	}, "the good messages are not all stored")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", tid) == 2
	}, "the unstorable messages are not dead-lettered")
	require.Zero(t, b.Logs.FilterMessage("store failed; retrying with backoff").Len(), "a data error was retried")
	r := b.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters", nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.Contains(t, string(r.Body), refused)
	require.Contains(t, string(r.Body), ancient)
}
