// Command healthcheck probes the service's liveness endpoint and exits 0 when it answers 200.
//
// It exists for container images without a shell or curl (distroless, scratch): the Dockerfile's
// HEALTHCHECK runs it inside the service's container. It reads the same HTTP_ADDR the server listens on
// (default :8080) and asks http://127.0.0.1:<port>/healthz; an argument overrides the URL.
//
//	healthcheck                                # GET http://127.0.0.1:8080/healthz (or HTTP_ADDR's port)
//	healthcheck http://127.0.0.1:9000/readyz   # GET that URL instead
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	url := target(os.Getenv("HTTP_ADDR"))
	if len(os.Args) > 1 {
		url = os.Args[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := check(ctx, url); err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		os.Exit(1)
	}
}

// target returns the liveness URL of a server listening on addr (HTTP_ADDR; empty means :8080). A wildcard
// or empty host becomes 127.0.0.1, because the probe runs next to the server.
func target(addr string) string {
	if addr == "" {
		addr = ":8080"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		host, port = "", "8080"
	}
	switch host {
	case "", "0.0.0.0", "::", "[::]":
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz"
}

// check answers nil when GET url answers 200 before ctx ends.
func check(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return nil
}
