package testenv

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/broker"
)

// ManagementProxy starts a proxy of the RabbitMQ management API at mgmtURL, closed when t ends, and returns its
// URL with mgmtURL's credentials. Each request goes to intercept first (nil: none), which answers it itself by
// returning true; the others reach the real API.
func ManagementProxy(t testing.TB, mgmtURL string, intercept func(http.ResponseWriter, *http.Request) bool) string {
	t.Helper()
	real, err := url.Parse(mgmtURL)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: real.Scheme, Host: real.Host})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if intercept != nil && intercept(w, r) {
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	return strings.Replace(front.URL, "http://", "http://"+real.User.String()+"@", 1)
}

// RabbitMQVersion is the version of the broker whose management API is at mgmtURL.
func RabbitMQVersion(t testing.TB, mgmtURL string) string {
	t.Helper()
	mgmt, err := broker.NewManagement(mgmtURL, nil)
	require.NoError(t, err)
	ov, err := mgmt.Overview(context.Background())
	require.NoError(t, err)
	return ov.RabbitMQVersion
}
