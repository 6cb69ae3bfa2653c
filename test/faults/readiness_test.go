// Package faults holds the tests that stop and restart the shared servers. They run alone (`go test -p 1`).
package faults

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

func TestReadinessFollowsTheBroker(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	require.Equal(t, http.StatusOK, testenv.Status(a.URL+"/readyz"))

	s.RunScript(t, "rabbitmq-stop-app")
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			s.RunScript(t, "rabbitmq-start-app")
		}
	})
	testenv.Eventually(t, 15*time.Second, func() bool { return testenv.Status(a.URL+"/readyz") == 503 },
		"/readyz did not turn 503 with the broker stopped")

	resp, err := http.Get(a.URL + "/readyz")
	require.NoError(t, err)
	var body struct {
		Status int `json:"status"`
		Errors []struct {
			Field string `json:"field"`
		} `json:"errors"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	resp.Body.Close()
	require.Equal(t, 503, body.Status)
	require.Len(t, body.Errors, 1)
	require.Equal(t, "broker", body.Errors[0].Field)
	require.Equal(t, http.StatusOK, testenv.Status(a.URL+"/healthz"), "liveness must not follow the broker")

	s.RunScript(t, "rabbitmq-start-app")
	restarted = true
	testenv.Eventually(t, 30*time.Second, func() bool { return testenv.Status(a.URL+"/readyz") == 200 },
		"/readyz did not return to 200 after the broker restarted")
}
