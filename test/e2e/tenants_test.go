package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/test/testenv"
	"go.uber.org/zap/zapcore"
)

func problemField(t *testing.T, r testenv.Response) string {
	t.Helper()
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"), string(r.Body))
	var p struct {
		Status int `json:"status"`
		Errors []struct {
			Field string `json:"field"`
		} `json:"errors"`
	}
	r.JSON(t, &p)
	require.Equal(t, r.Status, p.Status)
	if len(p.Errors) == 0 {
		return ""
	}
	return p.Errors[0].Field
}

func TestTenantAPI(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()

	r := a.Do(http.MethodPost, "/api/v1/tenants", `{"name":"  Acme Corp  ","concurrency_config":5}`)
	require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
	created := r.Map(t)
	require.NotEmpty(t, created["api_key"], "the creation answer shows the tenant's key once")
	delete(created, "api_key")
	delete(created, "api_key_id")
	require.Equal(t, "Acme Corp", created["name"])
	require.EqualValues(t, 5, created["concurrency_config"])
	id := created["id"].(string)
	for _, k := range []string{"created_at", "updated_at"} {
		ts, err := time.Parse(time.RFC3339Nano, created[k].(string))
		require.NoError(t, err)
		require.Equal(t, time.UTC, ts.Location())
	}

	r = a.Do(http.MethodPost, "/api/v1/tenants", `{"name":"Defaults"}`)
	require.Equal(t, http.StatusCreated, r.Status)
	require.EqualValues(t, 3, r.Map(t)["concurrency_config"])

	tenantsBefore := testenv.Count(t, db, "SELECT count(*) FROM tenants")
	bad := []struct{ body, field string }{
		{`{"name":`, ""},
		{`not json`, ""},
		{`[]`, ""},
		{`{"name":"x","extra":1}`, "extra"},
		{`{"name":5}`, "name"},
		{`{"name":"x","concurrency_config":"5"}`, "concurrency_config"},
		{`{"name":"x","concurrency_config":1.5}`, "concurrency_config"},
		{`{}`, "name"},
		{`{"name":"   "}`, "name"},
		{`{"name":"` + strings.Repeat("n", 256) + `"}`, "name"},
		{`{"name":"x","concurrency_config":0}`, "concurrency_config"},
		{`{"name":"x","concurrency_config":101}`, "concurrency_config"},
		{`{"name":"x"} {"name":"y"}`, ""},
	}
	for _, b := range bad {
		r := a.Do(http.MethodPost, "/api/v1/tenants", b.body)
		require.Equal(t, http.StatusBadRequest, r.Status, b.body)
		require.Equal(t, b.field, problemField(t, r), b.body)
	}
	r = a.Do(http.MethodPost, "/api/v1/tenants", `{"name":"x"}`, "Content-Type", "text/plain")
	require.Equal(t, http.StatusUnsupportedMediaType, r.Status)
	r = a.Do(http.MethodPost, "/api/v1/tenants", `{"name":"`+strings.Repeat("x", 300<<10)+`"}`)
	require.Equal(t, http.StatusRequestEntityTooLarge, r.Status)
	require.Equal(t, tenantsBefore, testenv.Count(t, db, "SELECT count(*) FROM tenants"), "bad input changed nothing")

	r = a.Do(http.MethodGet, "/api/v1/tenants/"+id, nil)
	require.Equal(t, http.StatusOK, r.Status)
	got := r.Map(t)
	// GET adds the state of the tenant's consumer: this replica runs it with its 5 workers.
	require.Equal(t, map[string]any{"replica": a.Config.ReplicaID, "running": true, "workers": float64(5),
		"queue_depth": float64(0), "queue_consumers": float64(1)}, got["consumer"])
	delete(got, "consumer")
	require.Equal(t, created, got)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+uuid.NewString(), nil).Status)
	r = a.Do(http.MethodGet, "/api/v1/tenants/not-a-uuid", nil)
	require.Equal(t, http.StatusBadRequest, r.Status)
	require.Equal(t, "id", problemField(t, r))

	r = a.Do(http.MethodPut, "/api/v1/tenants/"+id+"/config/concurrency", `{"workers":10}`)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.EqualValues(t, 10, r.Map(t)["concurrency_config"])
	for _, b := range []string{`{"workers":0}`, `{"workers":101}`, `{}`, `{"workers":"3"}`, `{"threads":3}`} {
		require.Equal(t, http.StatusBadRequest, a.Do(http.MethodPut, "/api/v1/tenants/"+id+"/config/concurrency", b).Status, b)
	}
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodPut, "/api/v1/tenants/"+uuid.NewString()+"/config/concurrency", `{"workers":2}`).Status)
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodPut, "/api/v1/tenants/zzz/config/concurrency", `{"workers":2}`).Status)

	// Concurrent deletes: one 204, the others 404, no error logged.
	statuses := make([]int, 8)
	var wg sync.WaitGroup
	for i := range statuses {
		wg.Add(1)
		go func() { defer wg.Done(); statuses[i] = a.Do(http.MethodDelete, "/api/v1/tenants/"+id, nil).Status }()
	}
	wg.Wait()
	n204 := 0
	for _, st := range statuses {
		require.Contains(t, []int{204, 404}, st)
		if st == 204 {
			n204++
		}
	}
	require.Equal(t, 1, n204, "%v", statuses)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+id, nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": id, "payload": map[string]any{}}).Status)
	require.Empty(t, a.Logs.FilterLevelExact(zapcore.ErrorLevel).All(), "errors were logged")
}

func TestTenantListPagination(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	var ids []string
	for i := range 7 {
		ids = append(ids, a.CreateTenant(fmt.Sprintf("t%d", i), 1))
	}
	var seen []string
	cursor := ""
	for {
		path := "/api/v1/tenants?limit=3"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		r := a.Do(http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		var page struct {
			Data       []struct{ ID string }
			NextCursor *string `json:"next_cursor"`
			HasMore    bool    `json:"has_more"`
		}
		r.JSON(t, &page)
		for _, d := range page.Data {
			seen = append(seen, d.ID)
		}
		if !page.HasMore {
			require.Nil(t, page.NextCursor)
			break
		}
		cursor = *page.NextCursor
	}
	for i, j := 0, len(ids)-1; i < j; i, j = i+1, j-1 {
		ids[i], ids[j] = ids[j], ids[i]
	}
	require.Equal(t, ids, seen, "newest first, each once")
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/tenants?limit=0", nil).Status)
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/tenants?cursor=@@", nil).Status)
}

func TestCreateMakesEverythingAndDeleteRemovesIt(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()
	id := a.CreateTenant("full", 4)
	tid := uuid.MustParse(id)

	require.Equal(t, 1, testenv.Count(t, db, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass
		AND inhrelid = to_regclass($1)`, messaging.PartitionName(tid)))
	awaitConsumed(t, a.Config.AMQPURL, tid, 5*time.Second, "queue with one consumer")
	ok, _, _ := testenv.QueueState(t, a.Config.AMQPURL, consumer.DeadLetterQueueName(tid))
	require.False(t, ok, "a tenant has no dead-letter queue of its own (dead letters are rows)")

	a.Publish(id, map[string]any{"n": 1})
	testenv.Eventually(t, 5*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == 1
	}, "message stored")

	require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+id, nil).Status)
	require.Equal(t, 0, testenv.Count(t, db, "SELECT count(*) FROM tenants WHERE id = $1", tid))
	// The partition is dropped in the background, once no consumer of the tenant is left.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM pg_class WHERE relname = $1", messaging.PartitionName(tid)) == 0
	}, "partition dropped")
	for _, q := range []string{consumer.QueueName(tid), consumer.DeadLetterQueueName(tid)} {
		ok, _, _ := testenv.QueueState(t, a.Config.AMQPURL, q)
		require.False(t, ok, q)
	}
}

func TestHundredTenantsConcurrently(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()
	ids := make([]string, 100)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 20)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ids[i] = a.CreateTenant(fmt.Sprintf("bulk-%d", i), 1)
		}()
	}
	wg.Wait()
	require.Equal(t, 100, testenv.Count(t, db, `SELECT count(*) FROM pg_inherits JOIN tenants
		ON inhrelid = to_regclass('messages_tenant_' || replace(tenants.id::text, '-', '')) WHERE inhparent = 'messages'::regclass`))
	for _, id := range ids {
		tid := uuid.MustParse(id)
		awaitConsumed(t, a.Config.AMQPURL, tid, 5*time.Second, "queue and consumer of %s", id)
	}
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+id, nil).Status)
		}()
	}
	wg.Wait()
	require.Equal(t, 0, testenv.Count(t, db, `SELECT count(*) FROM tenants`))
	// The partitions are dropped in the background; what is left is the pool of partitions made ahead of time.
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname LIKE 'messages\_tenant\_%' AND relkind = 'r'
			AND relname NOT IN (SELECT 'messages_tenant_' || replace(tenant_id::text, '-', '') FROM partition_pool)`) == 0
	}, "every deleted tenant's partition dropped")
	require.Equal(t, 0, testenv.Count(t, db, `SELECT count(*) FROM partition_drops`))
	for _, id := range ids {
		ok, _, consumers := testenv.QueueState(t, a.Config.AMQPURL, consumer.QueueName(uuid.MustParse(id)))
		require.False(t, ok, "the queue of deleted tenant %s is still there (%d consumers)", id, consumers)
	}
}
