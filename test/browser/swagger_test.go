// Package browser holds tests that drive the service's pages in a headless Chromium, as a person would.
//
// They need Debian's chromium (`go tool task test` installs it when it is missing) besides the servers of
// test/testenv; like the other integration tests they skip without it, and fail with TEST_REQUIRE_SERVICES=1.
package browser_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// outputDir is test/output, where the screenshots go (git-ignored).
const outputDir = "../output"

// chromium returns the path of the Chromium binary, or skips (fails, with TEST_REQUIRE_SERVICES=1) t.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "chromium is not installed (`go tool task chromium` installs Debian's package)"
	if os.Getenv("TEST_REQUIRE_SERVICES") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// browser starts a headless Chromium with a fresh profile and returns a tab's context, closed when t ends.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox, // tests run as root here
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	ctx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelTab := chromedp.NewContext(ctx)
	t.Cleanup(cancelTab)
	return ctx
}

// operation is one operation of the document, or one that the UI lists.
type operation struct {
	Method string `json:"method"`
	Path   string `json:"path"`
}

func (o operation) String() string { return o.Method + " " + o.Path }

// specOperations reads the document the UI shows and returns its operations, sorted.
func specOperations(t *testing.T, baseURL string) []operation {
	t.Helper()
	resp, err := http.Get(baseURL + "/swagger/doc.json")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	var ops []operation
	for path, methods := range doc.Paths {
		for method := range methods {
			ops = append(ops, operation{Method: strings.ToUpper(method), Path: path})
		}
	}
	slices.SortFunc(ops, func(a, b operation) int { return strings.Compare(a.String(), b.String()) })
	return ops
}

// listedOperationsJS collects the operations Swagger UI shows, sorted.
const listedOperationsJS = `Array.from(document.querySelectorAll("#swagger-ui .opblock")).map(b => ({
	method: b.querySelector(".opblock-summary-method").textContent.trim().toUpperCase(),
	path: b.querySelector(".opblock-summary-path").getAttribute("data-path"),
})).sort((a, b) => (a.method + " " + a.path).localeCompare(b.method + " " + b.path, "en"))`

func save(t *testing.T, name string, png []byte) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(outputDir, 0o755))
	path := filepath.Join(outputDir, name)
	require.NoError(t, os.WriteFile(path, png, 0o644))
	abs, _ := filepath.Abs(path)
	t.Logf("screenshot: %s", abs)
	return abs
}

// TestSwaggerUIListsEveryOperationAndTriesOne opens the Swagger UI that the running service serves, checks
// that it lists every operation of the document, creates a tenant with "Try it out" and sees the 201 answer.
func TestSwaggerUIListsEveryOperationAndTriesOne(t *testing.T) {
	s := testenv.Get(t)
	ctx := browser(t)
	a := testenv.Start(t, s.Config(t))

	want := specOperations(t, a.URL)
	require.NotEmpty(t, want)

	// /swagger/ redirects to the page; the UI loads the document from the same server and renders it.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(a.URL+"/swagger/"),
		chromedp.WaitVisible(chromedp.CSS("#swagger-ui .opblock")),
	))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Equal(t, a.URL+"/swagger/index.html", loc)
	title, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#swagger-ui .info .title")))
	require.NoError(t, err)
	require.Contains(t, title, "Multi-tenant messaging service")

	listed, err := chromedp.Run(ctx, chromedp.Evaluate[[]operation](listedOperationsJS))
	require.NoError(t, err)
	// In Go's order, as specOperations (JavaScript's localeCompare puts "{" before letters, Go after).
	slices.SortFunc(listed, func(a, b operation) int { return strings.Compare(a.String(), b.String()) })
	require.Equal(t, want, listed, "Swagger UI must list every operation of the document, once")
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	save(t, "swagger-ui.png", png)

	// Authorize with the admin key through the UI's Authorize button (the bearer scheme).
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(".auth-wrapper .authorize")),
		chromedp.WaitVisible(chromedp.CSS(".modal-ux input")),
		chromedp.SendKeys(chromedp.CSS(".modal-ux input"), "Bearer "+testenv.AdminKey),
		chromedp.Click(chromedp.CSS(".modal-ux .auth-btn-wrapper .authorize")),
		chromedp.Click(chromedp.CSS(".modal-ux .close-modal")),
	))

	// Try it out: POST /api/v1/tenants with a body typed into the UI.
	const op = "#operations-tenants-createTenant"
	name := testenv.RandomName("browser-")
	body := fmt.Sprintf(`{"name": %q, "concurrency_config": 2}`, name)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(op+" .opblock-summary-control")),
		chromedp.WaitVisible(chromedp.CSS(op+" .try-out__btn")),
		chromedp.Click(chromedp.CSS(op+" .try-out__btn")),
		chromedp.WaitVisible(chromedp.CSS(op+" textarea.body-param__text")),
		chromedp.Focus(chromedp.CSS(op+" textarea.body-param__text")),
		chromedp.Evaluate[chromedp.Void](`document.querySelector("`+op+` textarea.body-param__text").select()`),
		chromedp.SendKeys(chromedp.CSS(op+" textarea.body-param__text"), body),
	))
	typed, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS(op+" textarea.body-param__text")))
	require.NoError(t, err)
	require.JSONEq(t, body, typed)

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(op+" .btn.execute")),
		chromedp.WaitVisible(chromedp.CSS(op+" .live-responses-table tr.response .response-col_status")),
	))
	status, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(op+" .live-responses-table tr.response .response-col_status")))
	require.NoError(t, err)
	require.Equal(t, "201", strings.TrimSpace(status))
	requestURL, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(op+" .request-url pre")))
	require.NoError(t, err)
	require.Equal(t, a.URL+"/api/v1/tenants", strings.TrimSpace(requestURL), "Try it out must call the server that served the page")
	answer, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(op+" .live-responses-table tr.response .response-col_description .highlight-code pre")))
	require.NoError(t, err)
	var created struct {
		ID                string `json:"id"`
		Name              string `json:"name"`
		ConcurrencyConfig int    `json:"concurrency_config"`
	}
	require.NoError(t, json.Unmarshal([]byte(answer), &created), answer)
	require.Equal(t, name, created.Name)
	require.Equal(t, 2, created.ConcurrencyConfig)

	png, err = chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS(op)))
	require.NoError(t, err)
	save(t, "swagger-ui-try-it-out.png", png)

	// The tenant really exists.
	r := a.Do(http.MethodGet, "/api/v1/tenants/"+created.ID, nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.Equal(t, name, r.Map(t)["name"])
}
