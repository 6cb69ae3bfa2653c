// Package testdb gives a test an empty database of its own on the test PostgreSQL server. It imports nothing of
// the service's, so that the tests of any package can use it, platform/database's own included (test/testenv
// imports platform/database, which its tests could not import back).
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

// AdminURL returns TEST_DATABASE_URL, a superuser's URL of the test server. Without it t is skipped, or failed
// under TEST_REQUIRE_SERVICES=1 (CI), so that an integration test never skips silently there.
func AdminURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("TEST_DATABASE_URL")
	if u == "" {
		if os.Getenv("TEST_REQUIRE_SERVICES") == "1" {
			t.Fatal("TEST_DATABASE_URL is required")
		}
		t.Skip("TEST_DATABASE_URL is not set")
	}
	return u
}

// Create creates an empty database, named prefix followed by 12 random hex digits, on the server adminURL points
// at (a superuser's URL), and drops it when t ends, its sessions forced out. It returns the database's name and
// its URL (adminURL with the database's name as path).
func Create(t testing.TB, adminURL, prefix string) (name, dbURL string) {
	t.Helper()
	u, err := url.Parse(adminURL)
	if err != nil {
		t.Fatalf("test database URL: %v", err)
	}
	name = RandomName(prefix)
	if err := exec(adminURL, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		// A test may have closed the database to new sessions (ALLOW_CONNECTIONS false): opened again first.
		_ = exec(adminURL, "ALTER DATABASE "+name+" ALLOW_CONNECTIONS true", "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u.Path = "/" + name
	return name, u.String()
}

// RandomName returns prefix followed by 12 random hex digits.
func RandomName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// exec runs statements on a session of its own on adminURL.
func exec(adminURL string, statements ...string) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, s := range statements {
		if _, err := conn.Exec(ctx, s); err != nil {
			return err
		}
	}
	return nil
}
