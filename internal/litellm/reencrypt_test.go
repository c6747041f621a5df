package litellm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

// seeder seeds a fresh database per test on one cluster: starting a
// cluster costs seconds on a busy machine.
type seeder struct {
	pg *lab.Postgres
	n  int
}

func (s *seeder) seed(t *testing.T, cfg lab.SeedConfig) (*pgx.Conn, *lab.SeedResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s.n++
	db := fmt.Sprintf("litellm_%d", s.n)
	if err := s.pg.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	res, err := lab.Seed(ctx, s.pg.URL(db), cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(context.Background(), s.pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, res
}

// TestAtRestAndReissueSQL runs the database tests of re-encryption and
// re-issue on one cluster.
func TestAtRestAndReissueSQL(t *testing.T) {
	s := &seeder{pg: labtest.Postgres(t)}
	t.Run("reencrypt", func(t *testing.T) { testReencryptAtRest(t, s) })
	t.Run("undecryptable", func(t *testing.T) { testReencryptUndecryptable(t, s) })
	t.Run("reissue without cascade", func(t *testing.T) { testApplyReissueWithoutCascade(t, s) })
}

// storedValue reads one seeded value back from the database.
func storedValue(t *testing.T, conn *pgx.Conn, v lab.SeededValue) string {
	t.Helper()
	cols := map[string][2]string{
		"LiteLLM_ProxyModelTable":   {"model_id", "litellm_params"},
		"LiteLLM_CredentialsTable":  {"credential_id", "credential_values"},
		"LiteLLM_Config":            {"param_name", "param_value"},
		"LiteLLM_VerificationToken": {"token", "metadata"},
		"LiteLLM_TeamTable":         {"team_id", "metadata"},
		"LiteLLM_UserTable":         {"user_id", "metadata"},
	}[v.Table]
	var doc []byte
	if err := conn.QueryRow(context.Background(), `SELECT "`+cols[1]+`" FROM "`+v.Table+`" WHERE "`+cols[0]+`" = $1`, v.Row).Scan(&doc); err != nil {
		t.Fatalf("%s row %s: %v", v.Table, v.Row, err)
	}
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	path := strings.Split(strings.TrimPrefix(v.Field, "metadata."), ".")
	var cur any = m
	for _, p := range path {
		switch x := cur.(type) {
		case map[string]any:
			cur = x[p]
		case []any:
			cur = x[0].(map[string]any)[p]
		}
	}
	s, ok := cur.(string)
	if !ok {
		t.Fatalf("%s row %s field %s: not a string", v.Table, v.Row, v.Field)
	}
	return s
}

func testReencryptAtRest(t *testing.T, s *seeder) {
	oldKey, _ := litellm.NewMasterKey()
	newKey, _ := litellm.NewMasterKey()
	conn, res := s.seed(t, lab.SeedConfig{MasterKey: oldKey, Keys: 40})
	ctx := context.Background()
	keys := litellm.ReencryptKeys{Old: oldKey, New: newKey}

	scan, err := litellm.ScanAtRest(ctx, conn, keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Values) != len(res.AtRest) || scan.Pending() != len(res.AtRest) {
		t.Fatalf("scan found %d values (%d pending), seed wrote %d", len(scan.Values), scan.Pending(), len(res.AtRest))
	}
	// A standard-base64 value with no '+' or '/' reads as URL-safe too: no
	// character tells the alphabets apart, and it is written back URL-safe
	// (LiteLLM reads both).
	ambiguous := map[string]bool{}
	for _, v := range res.AtRest {
		if v.Format == litellm.FormatLegacyStd && !strings.ContainsAny(storedValue(t, conn, v), "+/") {
			ambiguous[v.Table+v.Row+v.Field] = true
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := litellm.ReencryptAtRest(ctx, tx, keys, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got.Rewritten != len(res.AtRest) {
		t.Errorf("rewrote %d values, want %d", got.Rewritten, len(res.AtRest))
	}
	for _, v := range res.AtRest {
		ct := storedValue(t, conn, v)
		plain, f, err := litellm.Decrypt(newKey, ct)
		if err != nil {
			t.Fatalf("%s row %s %s: %v", v.Table, v.Row, v.Field, err)
		}
		if v.Format == litellm.FormatLegacyStd && f == litellm.FormatLegacy && (!strings.ContainsAny(ct, "-_") || ambiguous[v.Table+v.Row+v.Field]) {
			f = litellm.FormatLegacyStd // no character tells the two alphabets apart
		}
		if string(plain) != v.Plain.Reveal() || f != v.Format {
			t.Errorf("%s row %s %s: format %s (was %s), plaintext kept %v", v.Table, v.Row, v.Field, f, v.Format, string(plain) == v.Plain.Reveal())
		}
		if _, _, err := litellm.Decrypt(oldKey, ct); err == nil {
			t.Errorf("%s row %s %s still opens with the old key", v.Table, v.Row, v.Field)
		}
	}

	// Again: nothing to do.
	tx, _ = conn.Begin(ctx)
	again, err := litellm.ReencryptAtRest(ctx, tx, keys, false)
	if err != nil {
		t.Fatal(err)
	}
	_ = tx.Commit(ctx)
	if again.Rewritten != 0 || again.Count(litellm.StateNew) != len(res.AtRest) {
		t.Errorf("second run rewrote %d, found %d under the new key", again.Rewritten, again.Count(litellm.StateNew))
	}

	// Asking for v3 rewrites what is not v3 yet, under the same key.
	v3 := litellm.ReencryptKeys{Old: oldKey, New: newKey, To: litellm.FormatV3GCM}
	scan, _ = litellm.ScanAtRest(ctx, conn, v3)
	notV3 := 0
	for _, v := range res.AtRest {
		if v.Format != litellm.FormatV3GCM {
			notV3++
		}
	}
	if scan.Count(litellm.StateNewFormat) != notV3 {
		t.Errorf("%d values to rewrite as v3, want %d", scan.Count(litellm.StateNewFormat), notV3)
	}
	tx, _ = conn.Begin(ctx)
	if _, err := litellm.ReencryptAtRest(ctx, tx, v3, false); err != nil {
		t.Fatal(err)
	}
	_ = tx.Commit(ctx)
	for _, v := range res.AtRest {
		ct := storedValue(t, conn, v)
		plain, f, err := litellm.Decrypt(newKey, ct)
		if err != nil || f != litellm.FormatV3GCM || string(plain) != v.Plain.Reveal() {
			t.Errorf("%s row %s %s: format %s err %v", v.Table, v.Row, v.Field, f, err)
		}
	}

	// Plain values and numbers are left alone.
	var params []byte
	if err := conn.QueryRow(ctx, `SELECT litellm_params FROM "LiteLLM_ProxyModelTable" LIMIT 1`).Scan(&params); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(params), `"rpm": 600`) {
		t.Errorf("numbers changed: %s", params)
	}
}

func testReencryptUndecryptable(t *testing.T, s *seeder) {
	oldKey, _ := litellm.NewMasterKey()
	newKey, _ := litellm.NewMasterKey()
	other := secret.New("sk-some-other-key-entirely-0123456789")
	conn, res := s.seed(t, lab.SeedConfig{MasterKey: oldKey, Keys: 10})
	ctx := context.Background()
	ct, _ := litellm.Encrypt(other, []byte("sk-upstream-unknown"), litellm.FormatV2GCM)
	if _, err := conn.Exec(ctx, `INSERT INTO "LiteLLM_CredentialsTable" (credential_id, credential_name, credential_values, created_by, updated_by)
        VALUES ('cred-stray', 'stray', jsonb_build_object('api_key', $1::text), 'x', 'x')`, ct); err != nil {
		t.Fatal(err)
	}
	keys := litellm.ReencryptKeys{Old: oldKey, New: newKey}
	tx, _ := conn.Begin(ctx)
	_, err := litellm.ReencryptAtRest(ctx, tx, keys, false)
	_ = tx.Rollback(ctx)
	var ue *litellm.UndecryptableError
	if !errors.As(err, &ue) || len(ue.Values) != 1 || ue.Values[0].Row != "cred-stray" || ue.Values[0].Table != "LiteLLM_CredentialsTable" {
		t.Fatalf("err %v", err)
	}
	if !strings.Contains(err.Error(), "LiteLLM_CredentialsTable row cred-stray field api_key") {
		t.Errorf("error does not name table, row and field: %v", err)
	}
	if strings.Contains(err.Error(), ct) {
		t.Error("error holds the ciphertext")
	}
	// Allowed: everything else moves, the stray value stays.
	tx, _ = conn.Begin(ctx)
	got, err := litellm.ReencryptAtRest(ctx, tx, keys, true)
	if err != nil {
		t.Fatal(err)
	}
	_ = tx.Commit(ctx)
	if got.Rewritten != len(res.AtRest) {
		t.Errorf("rewrote %d, want %d", got.Rewritten, len(res.AtRest))
	}
	var now string
	_ = conn.QueryRow(ctx, `SELECT credential_values->>'api_key' FROM "LiteLLM_CredentialsTable" WHERE credential_id = 'cred-stray'`).Scan(&now)
	if now != ct {
		t.Error("the undecryptable value changed")
	}
	if _, err := litellm.ScanAtRest(ctx, conn, litellm.ReencryptKeys{Old: oldKey, New: oldKey}); err == nil {
		t.Error("same old and new key accepted")
	}
}

// testApplyReissueWithoutCascade: a database whose JWT mapping foreign key
// does not exist (older schemas) still gets its mappings moved.
func testApplyReissueWithoutCascade(t *testing.T, s *seeder) {
	mk, _ := litellm.NewMasterKey()
	conn, res := s.seed(t, lab.SeedConfig{MasterKey: mk, Keys: 40})
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `ALTER TABLE "LiteLLM_JWTKeyMapping" DROP CONSTRAINT "LiteLLM_JWTKeyMapping_token_fkey"`); err != nil {
		t.Fatal(err)
	}
	var batch []litellm.Reissue
	mapped := 0
	for _, k := range res.Keys {
		nk, _ := litellm.NewVirtualKey()
		batch = append(batch, litellm.Reissue{OldToken: k.Hash, NewToken: litellm.HashToken(nk.Reveal()), KeyName: litellm.KeyName(nk.Reveal())})
		if k.JWTMapped {
			mapped++
		}
	}
	batch = append(batch, litellm.Reissue{OldToken: strings.Repeat("ab", 32), NewToken: strings.Repeat("cd", 32), KeyName: "sk-...cdcd"})
	tx, _ := conn.Begin(ctx)
	r, err := litellm.ApplyReissue(ctx, tx, batch, litellm.ReissueOptions{By: "runbook:test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Updated != len(res.Keys) || len(r.Missing) != 1 || r.JWTUpdated != mapped || r.Audited != len(res.Keys) {
		t.Errorf("result %+v (mapped %d)", r, mapped)
	}
	var n int
	_ = conn.QueryRow(ctx, `SELECT count(*) FROM "LiteLLM_JWTKeyMapping" m JOIN "LiteLLM_VerificationToken" v ON v.token = m.token`).Scan(&n)
	if n != mapped {
		t.Errorf("%d mappings follow, want %d", n, mapped)
	}
}
