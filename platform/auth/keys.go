// Package auth authenticates API requests by bearer key and tells handlers who is calling.
//
// Admin keys come from configuration (ADMIN_API_KEYS) and may call every endpoint. Tenant keys are issued by
// the tenant module, which stores only their hashes; a tenant key may publish to and read its own tenant's
// messages and read its own tenant. Keys look like msk_<key id>_<secret>: the key id finds the stored hash,
// and the secret is compared with it in constant time.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strings"
)

// Prefix starts every key this service issues, so that leaked keys are recognisable (secret scanners).
const Prefix = "msk_"

// NewKey returns a new tenant key, its id and the hash to store.
func NewKey() (key, id string, hash []byte) {
	id = randomString(9)
	secret := randomString(32)
	return Prefix + id + "_" + secret, id, Hash(secret)
}

func randomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Parse splits a tenant key into its id and secret.
func Parse(key string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(key, Prefix)
	if !ok {
		return "", "", false
	}
	// The id is 12 base64url characters, which may themselves contain '_'.
	if len(rest) < 14 || rest[12] != '_' {
		return "", "", false
	}
	return rest[:12], rest[13:], true
}

// Hash is the stored form of a secret.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// equalHash compares two hashes in constant time.
func equalHash(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }
