package labtest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
)

// UpTimeout bounds bringing a lab up in a test. A cold build of the Vault
// server alone takes minutes.
var UpTimeout = 10 * time.Minute

// Up brings up a lab for the test and tears it down when the test ends.
// Without cfg.Dir it uses a fresh short directory under the system's
// temporary directory (PostgreSQL's unix socket path must stay short). The
// lab's owner is this process, so should the test binary die before its
// clean-up, the next lab reclaims what it left. Infrastructure that is not
// on this machine fails the test when CI is set and skips it otherwise.
func Up(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	if err := lab.Available(cfg); err != nil {
		Missing(t, "lab infrastructure is missing: "+err.Error())
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "rbl")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		cfg.Dir = dir
	}
	if cfg.Owner == 0 {
		cfg.Owner = os.Getpid()
	}
	ctx, cancel := context.WithTimeout(context.Background(), UpTimeout)
	defer cancel()
	l, err := lab.Up(ctx, cfg)
	// Registered even on failure: Down clears whatever did start.
	t.Cleanup(func() {
		if err := lab.Down(cfg.Dir); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	if err != nil {
		if lab.IsMissing(err) {
			Missing(t, "lab infrastructure is missing: "+err.Error())
		}
		t.Fatalf("lab up: %v", err)
	}
	return l
}

// Full is Up with n gateways, nginx, PostgreSQL and Vault.
func Full(t testing.TB, n int) *lab.Lab {
	t.Helper()
	return Up(t, lab.Config{Gateways: n, Nginx: true, Postgres: true, Vault: true})
}
