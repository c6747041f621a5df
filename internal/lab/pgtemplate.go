package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/litellm"
)

// TemplateDatabase is the database the template cluster holds with
// LiteLLM's schema already created.
const TemplateDatabase = "litellm"

func templateSchema(ctx context.Context, pg *Postgres) error {
	if err := pg.CreateDatabase(ctx, TemplateDatabase); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, pg.URL(TemplateDatabase))
	if err != nil {
		return fmt.Errorf("create litellm schema: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, litellm.SchemaSQL); err != nil {
		return fmt.Errorf("create litellm schema: %w", err)
	}
	return nil
}

// copyPostgresTemplate gives dir/data a copy of a cached, freshly
// initialised cluster, so that StartPostgres finds a cluster and skips
// initdb: on two busy cores initdb takes seconds, the copy a fraction of
// that. The template is made once per PostgreSQL installation by
// StartPostgres itself, so it is what initdb makes for the lab, plus the
// database TemplateDatabase with LiteLLM's schema. On any
// failure dir is left without data and StartPostgres runs initdb.
func copyPostgresTemplate(ctx context.Context, dir string) error {
	tmpl, err := postgresTemplate(ctx)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data := filepath.Join(dir, "data")
	if out, err := exec.CommandContext(ctx, "cp", "-a", tmpl, data).CombinedOutput(); err != nil {
		_ = os.RemoveAll(data)
		return fmt.Errorf("copy postgres template: %w: %s", err, tail(out))
	}
	return nil
}

// postgresTemplate returns the cached template data directory, making it
// first if needed.
func postgresTemplate(ctx context.Context) (string, error) {
	bin, err := findPostgresBin()
	if err != nil {
		return "", err
	}
	initdb, err := os.Stat(filepath.Join(bin, "initdb"))
	if err != nil {
		return "", err
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	// Keyed by the installation (a package upgrade changes the binary)
	// and LiteLLM's schema, which the template holds.
	sum := sha256.Sum256([]byte(bin + "\x00" + strconv.FormatInt(initdb.ModTime().UnixNano(), 10) + "\x00" +
		strconv.FormatInt(initdb.Size(), 10) + "\x00" + litellm.SchemaSQL))
	tmpl := filepath.Join(cache, "pgdata-"+hex.EncodeToString(sum[:])[:12])
	if _, err := os.Stat(filepath.Join(tmpl, "PG_VERSION")); err == nil {
		return tmpl, nil
	}
	err = withFileLock(tmpl+".lock", func() error {
		if _, err := os.Stat(filepath.Join(tmpl, "PG_VERSION")); err == nil {
			return nil
		}
		// Made under the temporary directory: StartPostgres opens the
		// directory's ancestors to the postgres user, which the cache's
		// (a home directory) must not be.
		work, err := os.MkdirTemp("", "rbl-pgtmpl")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		port, err := FreePort()
		if err != nil {
			return err
		}
		pg, err := StartPostgres(ctx, filepath.Join(work, "pg"), port)
		if err != nil {
			return err
		}
		if err := templateSchema(ctx, pg); err != nil {
			_ = pg.Stop()
			return err
		}
		if err := pg.Stop(); err != nil {
			return err
		}
		_ = os.Remove(filepath.Join(pg.DataDir, "postmaster.opts"))
		part := tmpl + ".part"
		_ = os.RemoveAll(part)
		if out, err := exec.CommandContext(ctx, "cp", "-a", pg.DataDir, part).CombinedOutput(); err != nil {
			_ = os.RemoveAll(part)
			return fmt.Errorf("%w: %s", err, tail(out))
		}
		return os.Rename(part, tmpl)
	})
	if err != nil {
		return "", fmt.Errorf("make postgres template: %w", err)
	}
	return tmpl, nil
}
