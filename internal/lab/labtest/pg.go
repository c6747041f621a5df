// Package labtest starts lab infrastructure for tests. It is not a _test
// package so that tests of several packages can share it.
package labtest

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
)

// Missing fails the test when CI is set and skips it otherwise: what a test
// does when infrastructure it needs is not on the machine.
func Missing(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but %s", reason)
	}
	t.Skip(reason)
}

// Postgres starts a fresh PostgreSQL cluster in a temporary directory on a
// free port, stopped when the test ends.
func Postgres(t testing.TB) *lab.Postgres {
	t.Helper()
	if err := lab.PostgresAvailable(); err != nil {
		Missing(t, "postgresql is not available: "+err.Error())
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var lastErr error
	// A port found free can be taken by another test before the server
	// binds it; try a few.
	for attempt := 0; attempt < 3; attempt++ {
		port, err := lab.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		pg, err := lab.StartPostgres(ctx, dir, port)
		if err == nil {
			t.Cleanup(func() {
				if err := pg.Stop(); err != nil {
					t.Errorf("stop postgres: %v", err)
				}
			})
			return pg
		}
		lastErr = err
		if errors.Is(err, lab.ErrNoPostgres) {
			break
		}
	}
	t.Fatalf("start postgres: %v", lastErr)
	return nil
}
