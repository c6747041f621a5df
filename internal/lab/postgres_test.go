package lab_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
)

func TestPostgresStartReuseStop(t *testing.T) {
	pg := labtest.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for i := 0; i < 2; i++ {
		if err := pg.CreateDatabase(ctx, "LiteLLM-db"); err != nil {
			t.Fatalf("create database (%d): %v", i, err)
		}
	}
	conn, err := pgx.Connect(ctx, pg.URL("LiteLLM-db"))
	if err != nil {
		t.Fatal(err)
	}
	var fsync string
	if err := conn.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if fsync != "off" {
		t.Errorf("fsync = %q, want off", fsync)
	}
	if pg.SocketDir != "" {
		if _, err := os.Stat(filepath.Join(pg.SocketDir, ".s.PGSQL."+itoa(pg.Port))); err != nil {
			t.Errorf("unix socket: %v", err)
		}
	}

	// Starting again from the same directory reuses the running server.
	again, err := lab.StartPostgres(ctx, pg.Dir, pg.Port)
	if err != nil {
		t.Fatalf("reuse: %v", err)
	}
	if again.URL("x") != pg.URL("x") {
		t.Errorf("reuse URL %q, want %q", again.URL("x"), pg.URL("x"))
	}
	// A different port for a running cluster is refused.
	if _, err := lab.StartPostgres(ctx, pg.Dir, pg.Port+1); err == nil {
		t.Error("start on another port while running: no error")
	}

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	// Restart keeps the data.
	pg2, err := lab.StartPostgres(ctx, pg.Dir, pg.Port)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	if err := pg2.CreateDatabase(ctx, "LiteLLM-db"); err != nil {
		t.Fatal(err)
	}
}

func TestFreePort(t *testing.T) {
	p, err := lab.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if p <= 0 || p > 65535 {
		t.Fatalf("port %d", p)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
