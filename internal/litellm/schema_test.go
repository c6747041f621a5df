package litellm_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
)

func TestSchemaIdempotentAndConstraints(t *testing.T) {
	pg := labtest.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for i := 0; i < 2; i++ {
		if _, err := conn.Exec(ctx, litellm.SchemaSQL); err != nil {
			t.Fatalf("apply schema (%d): %v", i, err)
		}
	}
	for _, tbl := range []string{litellm.TableVerificationToken, litellm.TableJWTKeyMapping,
		litellm.TableDeprecatedVerificationToken, litellm.TableDeletedVerificationToken,
		litellm.TableSpendLogs, litellm.TableProxyModel, litellm.TableCredentials,
		litellm.TableConfig, litellm.TableTeam, litellm.TableUser} {
		if _, err := conn.Exec(ctx, "SELECT 1 FROM "+tbl+" LIMIT 1"); err != nil {
			t.Errorf("table %s: %v", tbl, err)
		}
	}
	// Column types the runner relies on.
	want := map[string]string{
		"LiteLLM_VerificationToken.token":               "text",
		"LiteLLM_VerificationToken.spend":               "double precision",
		"LiteLLM_VerificationToken.expires":             "timestamp without time zone",
		"LiteLLM_VerificationToken.models":              "ARRAY",
		"LiteLLM_VerificationToken.metadata":            "jsonb",
		"LiteLLM_VerificationToken.blocked":             "boolean",
		"LiteLLM_VerificationToken.rotation_count":      "integer",
		"LiteLLM_SpendLogs.startTime":                   "timestamp without time zone",
		"LiteLLM_SpendLogs.user":                        "text",
		"LiteLLM_ProxyModelTable.litellm_params":        "jsonb",
		"LiteLLM_CredentialsTable.credential_values":    "jsonb",
		"LiteLLM_Config.param_value":                    "jsonb",
		"LiteLLM_DeprecatedVerificationToken.revoke_at": "timestamp without time zone",
	}
	rows, err := conn.Query(ctx, `SELECT table_name || '.' || column_name, data_type
		FROM information_schema.columns WHERE table_name LIKE 'LiteLLM_%'`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var c, ty string
		if err := rows.Scan(&c, &ty); err != nil {
			t.Fatal(err)
		}
		got[c] = ty
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for c, ty := range want {
		if got[c] != ty {
			t.Errorf("column %s: type %q, want %q", c, got[c], ty)
		}
	}

	// A key with a JWT mapping cannot be deleted first; its token can be
	// changed in place and the mapping follows.
	tx := func(sql string, args ...any) error { _, err := conn.Exec(ctx, sql, args...); return err }
	if err := tx(`INSERT INTO "LiteLLM_VerificationToken"(token, key_name) VALUES ('h1', 'sk-...abcd')`); err != nil {
		t.Fatal(err)
	}
	if err := tx(`INSERT INTO "LiteLLM_JWTKeyMapping"(id, jwt_claim_name, jwt_claim_value, token) VALUES ('m1', 'sub', 'alice', 'h1')`); err != nil {
		t.Fatal(err)
	}
	if err := tx(`DELETE FROM "LiteLLM_VerificationToken" WHERE token = 'h1'`); err == nil {
		t.Error("deleting a mapped key succeeded")
	}
	if err := tx(`UPDATE "LiteLLM_VerificationToken" SET token = 'h2' WHERE token = 'h1'`); err != nil {
		t.Fatal(err)
	}
	var tok string
	if err := conn.QueryRow(ctx, `SELECT token FROM "LiteLLM_JWTKeyMapping" WHERE id = 'm1'`).Scan(&tok); err != nil || tok != "h2" {
		t.Errorf("mapping token %q, %v; want h2", tok, err)
	}
}
