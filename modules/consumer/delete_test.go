package consumer_test

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

// TestADeletionTriesAgainWhenTheBrokerRefusesTheQueuesDelete: the tenant's row is gone and the deletion answered
// 204 whatever the broker says, so a delete of its queues that fails once must not leave them until the orphan
// cleanup (minutes later, and never without the management API). The broker refuses the first delete here (the
// service's user lost the configure permission on the virtual host for a moment); the deletion tries again and
// the queue is gone when the 204 comes.
func TestADeletionTriesAgainWhenTheBrokerRefusesTheQueuesDelete(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReconcileInterval = time.Hour // no orphan cleanup to hide a leak
	a := testenv.Start(t, cfg)
	tenant := a.CreateTenant("doomed", 1)
	tid := uuid.MustParse(tenant)

	m := s.Management(t)
	u, err := url.Parse(cfg.AMQPURL)
	require.NoError(t, err)
	set := func(p broker.Permissions) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, m.SetPermissions(ctx, config.VHost(cfg.AMQPURL), u.User.Username(), p))
	}
	set(broker.Permissions{Configure: "^$", Write: ".*", Read: ".*"})
	restored := make(chan struct{})
	go func() {
		defer close(restored)
		testenv.Wait(10*time.Second, func() bool {
			return a.Logs.FilterMessage("could not delete a tenant's queues; trying again").Len() > 0
		})
		set(broker.FullPermissions)
	}()
	r := a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant, nil)
	<-restored
	require.Equal(t, http.StatusNoContent, r.Status, string(r.Body))
	require.Positive(t, a.Logs.FilterMessage("could not delete a tenant's queues; trying again").Len(),
		"the broker did not refuse the first delete: the test tests nothing")
	require.Zero(t, a.Logs.FilterMessageSnippet("tenant deleted but its").Len(), "the deletion left something behind")
	exists, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
	require.False(t, exists, "the deleted tenant's queue is still there")
}
