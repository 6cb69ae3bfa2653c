package browser_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// consoleErrors collects what Chromium reports as an error in the page: console.error, uncaught exceptions,
// failed loads and Content-Security-Policy violations.
type consoleErrors struct {
	mu   sync.Mutex
	errs []string
}

func (c *consoleErrors) listen(ev any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError {
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			c.errs = append(c.errs, "console.error: "+strings.Join(args, " "))
		}
	case *runtime.EventExceptionThrown:
		c.errs = append(c.errs, "exception: "+ev.ExceptionDetails.Text+" "+exceptionText(ev.ExceptionDetails))
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError {
			c.errs = append(c.errs, fmt.Sprintf("%s: %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
		}
	}
}

func (c *consoleErrors) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	errs := c.errs
	c.errs = nil
	return errs
}

// consoleTab opens a tab of a fresh Chromium whose page errors go to the returned collector.
func consoleTab(t *testing.T) (context.Context, *consoleErrors) {
	t.Helper()
	errs := &consoleErrors{}
	ctx, cancel := chromedp.NewContext(browser(t), chromedp.WithListener(errs.listen))
	t.Cleanup(cancel)
	return ctx, errs
}

// publishStraight publishes body to the tenant's queue with messageID, past the API's checks.
func publishStraight(t *testing.T, amqpURL, exchange, tenant, messageID string, body []byte) {
	t.Helper()
	ch := testenv.AMQP(t, amqpURL)
	require.NoError(t, ch.Confirm(false))
	dc, err := ch.PublishWithDeferredConfirm(exchange, tenant, true, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent, ContentType: "application/json", MessageId: messageID, Body: body,
	})
	require.NoError(t, err)
	require.True(t, dc.Wait())
}

// waitText waits until the element that selector finds (in the page as it is then: the console re-renders its
// tables every few seconds) contains want.
func waitText(t *testing.T, ctx context.Context, selector, want string) {
	t.Helper()
	sel, err := json.Marshal(selector)
	require.NoError(t, err)
	text, err := json.Marshal(want)
	require.NoError(t, err)
	require.NoError(t, chromedp.Do(ctx, chromedp.Poll[chromedp.Void](
		fmt.Sprintf(`(document.querySelector(%s)?.textContent ?? "").includes(%s)`, sel, text),
		chromedp.WithPollingTimeout(15*time.Second))), "%s never showed %q", selector, want)
}

func shoot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	save(t, name, png)
}

// TestConsoleOperatorFlow drives the console as an operator: signs in with the admin key, creates a tenant,
// sees a message published through the API, replays a dead letter and sees it stored, resizes and deletes the
// tenant; then signs in with a tenant key, which sees its tenant only. No page error is allowed on the way.
func TestConsoleOperatorFlow(t *testing.T) {
	s := testenv.Get(t)
	ctx, pageErrors := consoleTab(t)
	cfg := s.Config(t)
	a := testenv.Start(t, cfg)
	other := a.CreateTenant(testenv.RandomName("console-other-"), 1)

	// Sign in with the admin key.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(a.URL+"/console"),
		chromedp.WaitVisible(chromedp.CSS("#signin-form #key")),
	))
	shoot(t, ctx, "console-signin.png")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#key"), testenv.AdminKey),
		chromedp.Click(chromedp.CSS(`#signin-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#tenants-body tr[data-tenant-id="%s"]`, other))),
	))
	stored, err := chromedp.Run(ctx, chromedp.Evaluate[string](`sessionStorage.getItem("msgsvc.console.key")`))
	require.NoError(t, err)
	require.Equal(t, testenv.AdminKey, stored)
	cookies, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.cookie`))
	require.NoError(t, err)
	require.Empty(t, cookies)

	// A refused request shows the problem's title and detail.
	require.Empty(t, pageErrors.take())
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS(`#create-form input[name="name"]`), "too many workers"),
		chromedp.SetValue(chromedp.CSS(`#create-form input[name="workers"]`), "900"),
		chromedp.Click(chromedp.CSS(`#create-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#tenants-answer .answer.err")),
	))
	refused, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#tenants-answer")))
	require.NoError(t, err)
	require.Contains(t, refused, "400 Bad Request")
	require.Contains(t, refused, "concurrency_config")
	for _, e := range pageErrors.take() { // Chromium logs the refused request, and nothing else
		require.Contains(t, e, "400", e)
	}

	// Create a tenant through the form; its first key is shown.
	name := testenv.RandomName("console-")
	require.NoError(t, chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`document.querySelector("#create-form").reset()`)))
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS(`#create-form input[name="name"]`), name),
		chromedp.SetValue(chromedp.CSS(`#create-form input[name="workers"]`), "2"),
		chromedp.Click(chromedp.CSS(`#create-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#created-key")),
	))
	tenantKey, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#created-key")))
	require.NoError(t, err)
	tenant, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#created-id")))
	require.NoError(t, err)
	tenant = strings.TrimSpace(tenant)
	require.True(t, strings.HasPrefix(tenantKey, "msk_"), tenantKey)
	row := fmt.Sprintf(`#tenants-body tr[data-tenant-id="%s"]`, tenant)
	require.NoError(t, chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row))))
	waitText(t, ctx, row+` td[data-col="workers"]`, "2")

	// A message published through the API shows in the tenant's page, its payload as formatted JSON.
	id := a.Publish(tenant, map[string]any{"order": 42, "items": []string{"tea", "milk"}})
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(row+" td a")),
		chromedp.WaitVisible(chromedp.CSS("#tenant-name")),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#messages-body tr[data-message-id="%s"]`, id))),
	))
	waitText(t, ctx, fmt.Sprintf(`#messages-body tr[data-message-id="%s"] pre`, id), "{\n  \"items\": [\n    \"tea\",")

	// A message that cannot be stored (its message id is no UUID) becomes a dead letter; replayed, it is stored.
	publishStraight(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, "order-42", []byte(`{"order":43}`))
	dead := uuid.NewSHA1(uuid.MustParse(tenant), []byte("order-42")).String()
	deadRow := fmt.Sprintf(`#dead-body tr[data-dead-id="%s"]`, dead)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(deadRow)),
		chromedp.SetValue(chromedp.CSS("#reason"), "undecodable"),
		chromedp.Evaluate[chromedp.Void](`document.querySelector("#reason").dispatchEvent(new Event("change"))`),
		chromedp.WaitVisible(chromedp.CSS(deadRow)),
	))
	waitText(t, ctx, deadRow+" td.wrap", `message_id "order-42" is not a UUID`)
	shoot(t, ctx, "console-tenant.png")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(deadRow+` button[data-action="replay"]`)),
		chromedp.WaitVisible(chromedp.CSS("#dead-answer .answer.ok")),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#messages-body tr[data-message-id="%s"]`, dead))),
		chromedp.SendKeys(chromedp.CSS(`#find-form input[name="mid"]`), dead),
		chromedp.Click(chromedp.CSS(`#find-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#find-answer .answer.ok")),
	))
	found, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#find-answer")))
	require.NoError(t, err)
	require.Contains(t, found, `"state": "stored"`)

	// Discard one; replay all after a confirmation.
	publishStraight(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, "order-44", []byte(`{"order":44}`))
	discarded := fmt.Sprintf(`#dead-body tr[data-dead-id="%s"]`, uuid.NewSHA1(uuid.MustParse(tenant), []byte("order-44")))
	require.NoError(t, chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(discarded)),
		chromedp.Click(chromedp.CSS(discarded+` button[data-action="discard"]`)),
		chromedp.WaitNotPresent(chromedp.CSS(discarded)),
	))
	status, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#dead-answer .answer.ok .status")))
	require.NoError(t, err)
	require.Equal(t, "204", status)
	publishStraight(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, "order-45", []byte(`{"order":45}`))
	replayed := uuid.NewSHA1(uuid.MustParse(tenant), []byte("order-45")).String()
	require.NoError(t, chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#dead-body tr[data-dead-id="%s"]`, replayed))),
		chromedp.Click(chromedp.CSS("#replay-all")),
		chromedp.WaitVisible(chromedp.CSS(`#dialog button[type="submit"]`)),
		chromedp.Click(chromedp.CSS(`#dialog button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#dead-answer .answer.ok pre")),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#messages-body tr[data-message-id="%s"]`, replayed))),
	))
	all, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#dead-answer")))
	require.NoError(t, err)
	require.Contains(t, all, `"replayed": 1`)

	// Resize through the dialog.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#tenant-resize")),
		chromedp.WaitVisible(chromedp.CSS(`#dialog input[name="workers"]`)),
		chromedp.SetValue(chromedp.CSS(`#dialog input[name="workers"]`), "4"),
		chromedp.Click(chromedp.CSS(`#dialog button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#config-answer .answer.ok")),
		chromedp.Poll[chromedp.Void](`document.querySelector('[data-stat="workers"] .v').textContent === "4"`, chromedp.WithPollingTimeout(15*time.Second)),
	))
	r := a.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil)
	require.Equal(t, http.StatusOK, r.Status)
	require.EqualValues(t, 4, r.Map(t)["concurrency_config"])
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#tenant-rate")),
		chromedp.WaitVisible(chromedp.CSS(`#dialog input[name="rate"]`)),
		chromedp.SetValue(chromedp.CSS(`#dialog input[name="rate"]`), "50"),
		chromedp.Click(chromedp.CSS(`#dialog button[type="submit"]`)),
	))
	waitText(t, ctx, `[data-stat="rate_limit"] .v`, "50/s")
	require.Empty(t, pageErrors.take())

	// Retention through its dialog: two days, seen in the stats and through the API; a negative one is refused
	// with the problem naming the field.
	waitText(t, ctx, `[data-stat="retention"] .v`, "(default)")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#tenant-retention")),
		chromedp.WaitVisible(chromedp.CSS(`#dialog input[name="amount"]`)),
		chromedp.SendKeys(chromedp.CSS(`#dialog input[name="amount"]`), "2"),
		chromedp.SetValue(chromedp.CSS(`#dialog select[name="unit"]`), "days"),
	))
	shoot(t, ctx, "console-retention.png")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#dialog button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#config-answer .answer.ok")),
	))
	waitText(t, ctx, `[data-stat="retention"] .v`, "2 d")
	r = a.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil)
	require.Equal(t, http.StatusOK, r.Status)
	require.EqualValues(t, 2*86400, r.Map(t)["max_age_seconds"])
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#tenant-retention")),
		chromedp.WaitVisible(chromedp.CSS(`#dialog input[name="amount"]`)),
		chromedp.SetValue(chromedp.CSS(`#dialog input[name="amount"]`), ""),
		chromedp.SendKeys(chromedp.CSS(`#dialog input[name="amount"]`), "-1"),
		chromedp.SetValue(chromedp.CSS(`#dialog select[name="unit"]`), "seconds"),
		chromedp.Click(chromedp.CSS(`#dialog button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#config-answer .answer.err")),
	))
	refused, err = chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#config-answer")))
	require.NoError(t, err)
	require.Contains(t, refused, "400 Bad Request")
	require.Contains(t, refused, "max_age_seconds")
	for _, e := range pageErrors.take() { // Chromium logs the refused request, and nothing else
		require.Contains(t, e, "400", e)
	}
	r = a.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil)
	require.EqualValues(t, 2*86400, r.Map(t)["max_age_seconds"])

	// Ten more messages put the first on the second page, which the API's cursor reaches.
	batch := make([]map[string]any, 10)
	for i := range batch {
		batch[i] = map[string]any{"payload": map[string]int{"line": i}}
	}
	r = a.Do(http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": tenant, "messages": batch})
	require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))

	// Sign in as the tenant: its own page, no dead letters, and another tenant's page is a problem, not data.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#signout")),
		chromedp.WaitVisible(chromedp.CSS("#signin-form #key")),
		chromedp.SendKeys(chromedp.CSS("#key"), tenantKey),
		chromedp.SendKeys(chromedp.CSS("#tenant"), tenant),
		chromedp.Click(chromedp.CSS(`#signin-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#messages-body")),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll("#messages-body tr[data-message-id]").length === 10 && !document.querySelector("#messages-next").disabled`, chromedp.WithPollingTimeout(15*time.Second)),
		chromedp.Click(chromedp.CSS("#messages-next")),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#messages-body tr[data-message-id="%s"]`, id))),
	))
	deadShown, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`!!document.querySelector("#dead")`))
	require.NoError(t, err)
	require.False(t, deadShown)
	shoot(t, ctx, "console-tenant-key.png")
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(390, 844)))
	shoot(t, ctx, "console-tenant-phone.png")
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(1280, 1000)))
	require.Empty(t, pageErrors.take())
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(a.URL+"/console/#/tenants/"+other),
		chromedp.WaitVisible(chromedp.CSS("#error strong")),
	))
	problem, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#error")))
	require.NoError(t, err)
	require.Contains(t, problem, "Not Found")
	main, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
	require.NoError(t, err)
	require.NotContains(t, main, other)
	for _, e := range pageErrors.take() { // the refused request is logged by Chromium, and nothing else
		require.Contains(t, e, "404", e)
	}

	// Back as the admin: the tenants page at a phone's width, then delete the tenant with the confirmation.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#signout")),
		chromedp.WaitVisible(chromedp.CSS("#signin-form #key")),
		chromedp.SendKeys(chromedp.CSS("#key"), testenv.AdminKey),
		chromedp.Click(chromedp.CSS(`#signin-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(row)),
		chromedp.Poll[chromedp.Void](`document.querySelector('#tenants-body tr[data-tenant-id="`+tenant+`"] td[data-col="workers"]').textContent === "4"`, chromedp.WithPollingTimeout(15*time.Second)),
	))
	waitText(t, ctx, row+` td[data-col="retention"]`, "2 d")
	shoot(t, ctx, "console-tenants.png")
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(390, 844)))
	shoot(t, ctx, "console-tenants-phone.png")
	require.NoError(t, chromedp.Do(ctx,
		chromedp.EmulateViewport(1280, 1000),
		chromedp.Click(chromedp.CSS(row+` button[data-action="delete"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#dialog button[type="submit"]`)),
		chromedp.Click(chromedp.CSS(`#dialog button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#tenants-answer .answer.ok")),
		chromedp.WaitNotPresent(chromedp.CSS(row)),
	))
	r = a.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil)
	require.Equal(t, http.StatusNotFound, r.Status)
	require.Empty(t, pageErrors.take())
}

func exceptionText(d *runtime.ExceptionDetails) string {
	if d.Exception != nil {
		return d.Exception.Description
	}
	return ""
}
