// Package migrations embeds the SQL migrations applied at start-up, in lexical order of their file names.
package migrations

import "embed"

// FS holds every *.sql migration.
//
//go:embed *.sql
var FS embed.FS
