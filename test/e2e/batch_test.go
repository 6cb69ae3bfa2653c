package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

func TestBatchPublish(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()
	tenant := a.CreateTenant("batch", 4)
	tid := uuid.MustParse(tenant)

	msgs := make([]map[string]any, 250)
	for i := range msgs {
		msgs[i] = map[string]any{"payload": map[string]int{"i": i}}
	}
	r := a.Do(http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": tenant, "messages": msgs})
	require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
	var acc struct {
		TenantID string   `json:"tenant_id"`
		IDs      []string `json:"ids"`
		Status   string   `json:"status"`
	}
	r.JSON(t, &acc)
	require.Equal(t, tenant, acc.TenantID)
	require.Equal(t, "accepted", acc.Status)
	require.Len(t, acc.IDs, 250)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == 250
	}, "batch stored")
	require.Equal(t, 1, testenv.Count(t, db, `SELECT count(*) FROM messages WHERE id = $1 AND payload = '{"i":7}'`, uuid.MustParse(acc.IDs[7])))

	// Retrying a batch with the same Idempotency-Key names the same messages; they are stored once.
	small := msgs[:3]
	r1 := a.Do(http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": tenant, "messages": small}, "Idempotency-Key", "b-1")
	r2 := a.Do(http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": tenant, "messages": small}, "Idempotency-Key", "b-1")
	require.Equal(t, http.StatusAccepted, r1.Status)
	require.Equal(t, r1.Map(t)["ids"], r2.Map(t)["ids"])

	before := 253
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == before
	}, "idempotent retry stored once")

	bad := []struct {
		body  any
		field string
	}{
		{map[string]any{"tenant_id": tenant, "messages": []any{}}, "messages"},
		{map[string]any{"tenant_id": tenant}, "messages"},
		{map[string]any{"tenant_id": tenant, "messages": make([]map[string]any, 1001)}, "messages"},
		{map[string]any{"tenant_id": tenant, "messages": []any{map[string]any{"payload": map[string]int{}}, map[string]any{"payload": 5}}}, "messages[1].payload"},
		{map[string]any{"tenant_id": tenant, "messages": []any{map[string]any{"payload": map[string]int{}, "extra": 1}}}, "extra"},
		{map[string]any{"tenant_id": "x", "messages": msgs[:1]}, "tenant_id"},
	}
	for i, b := range bad {
		r := a.Do(http.MethodPost, "/api/v1/messages/batch", b.body)
		require.Equal(t, http.StatusBadRequest, r.Status, "case %d: %s", i, r.Body)
		require.Equal(t, b.field, problemField(t, r), "case %d", i)
	}
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodPost, "/api/v1/messages/batch",
		map[string]any{"tenant_id": uuid.NewString(), "messages": msgs[:1]}).Status)
	huge := fmt.Sprintf(`{"tenant_id":%q,"messages":[{"payload":{"x":"%s"}}]}`, tenant, strings.Repeat("a", 9<<20))
	require.Equal(t, http.StatusRequestEntityTooLarge, a.Do(http.MethodPost, "/api/v1/messages/batch", huge).Status)
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, before, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid), "bad batches stored nothing")
}
