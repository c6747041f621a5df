package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

func count(t *testing.T, conn *pgx.Conn, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestSeed(t *testing.T) {
	pg := labtest.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pg.CreateDatabase(ctx, "litellm"); err != nil {
		t.Fatal(err)
	}
	master, _ := litellm.NewMasterKey()
	salt := secret.New("salt-k3y-do-not-rotate-0123456789")
	cfg := lab.SeedConfig{MasterKey: master, SaltKey: salt}
	seed1, err := lab.Seed(ctx, pg.URL("litellm"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Reseeding replaces everything.
	res, err := lab.Seed(ctx, pg.URL("litellm"), cfg)
	if err != nil {
		t.Fatalf("reseed: %v", err)
	}
	conn, err := pgx.Connect(ctx, pg.URL("litellm"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	for _, k := range seed1.Keys {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM "LiteLLM_VerificationToken" WHERE token = $1`, k.Hash).Scan(&n); err != nil || n != 0 {
			t.Fatalf("a key of the first seed is still there after reseeding: %d rows, %v", n, err)
		}
	}
	if len(res.Keys) != 50 {
		t.Fatalf("%d keys, want 50", len(res.Keys))
	}
	if n := count(t, conn, `SELECT count(*) FROM "LiteLLM_VerificationToken"`); n != 50 {
		t.Errorf("%d token rows, want 50", n)
	}
	var traits struct{ noAlias, blocked, expired, expiring, graceOK, graceGone, jwt, cb, teams int }
	teams := map[string]bool{}
	for _, k := range res.Keys {
		if k.Hash != litellm.HashToken(k.Key.Reveal()) {
			t.Fatal("hash does not match key")
		}
		var name string
		var blocked *bool
		var expires *time.Time
		if err := conn.QueryRow(ctx, `SELECT key_name, blocked, expires FROM "LiteLLM_VerificationToken" WHERE token = $1`, k.Hash).
			Scan(&name, &blocked, &expires); err != nil {
			t.Fatalf("row for seeded key: %v", err)
		}
		if name != litellm.KeyName(k.Key.Reveal()) {
			t.Errorf("key_name %q", name)
		}
		if (blocked != nil && *blocked) != k.Blocked {
			t.Errorf("blocked %v, want %v", blocked, k.Blocked)
		}
		if (expires == nil) != k.Expires.IsZero() || (expires != nil && !expires.Equal(k.Expires)) {
			t.Errorf("expires %v, want %v", expires, k.Expires)
		}
		teams[k.TeamID] = true
		switch {
		case k.Alias == "":
			traits.noAlias++
		}
		if k.Blocked {
			traits.blocked++
		}
		if k.Expired {
			traits.expired++
			if k.Valid(res.Now) {
				t.Error("expired key valid")
			}
		} else if !k.Expires.IsZero() {
			traits.expiring++
		}
		if !k.GraceKey.IsZero() {
			if k.GraceValid(res.Now) {
				traits.graceOK++
			} else {
				traits.graceGone++
			}
			if n := count(t, conn, `SELECT count(*) FROM "LiteLLM_DeprecatedVerificationToken" WHERE token = $1 AND active_token_id = $2`, k.GraceHash, k.Hash); n != 1 {
				t.Errorf("grace row count %d", n)
			}
		}
		if k.JWTMapped {
			traits.jwt++
		}
		if k.CallbackVars {
			traits.cb++
		}
	}
	t.Logf("traits %+v", traits)
	if traits.noAlias == 0 || traits.blocked == 0 || traits.expired == 0 || traits.expiring == 0 ||
		traits.graceOK == 0 || traits.graceGone == 0 || traits.jwt == 0 || traits.cb == 0 || len(teams) < 2 {
		t.Errorf("missing a trait: %+v, %d teams", traits, len(teams))
	}
	if n := count(t, conn, `SELECT count(*) FROM "LiteLLM_JWTKeyMapping"`); n != traits.jwt {
		t.Errorf("%d jwt rows, want %d", n, traits.jwt)
	}

	// Master-key requests from several addresses over several hours.
	var ips int
	var span time.Duration
	var first, last time.Time
	if err := conn.QueryRow(ctx, `SELECT count(DISTINCT requester_ip_address), min("startTime"), max("startTime")
		FROM "LiteLLM_SpendLogs" WHERE api_key = $1`, res.MasterKeyHash).Scan(&ips, &first, &last); err != nil {
		t.Fatal(err)
	}
	span = last.Sub(first)
	if ips < 3 || span < 3*time.Hour {
		t.Errorf("master-key logs: %d addresses over %v", ips, span)
	}
	if n := count(t, conn, `SELECT count(*) FROM "LiteLLM_SpendLogs"`); n != res.SpendLogs {
		t.Errorf("%d spend logs, want %d", n, res.SpendLogs)
	}

	// Every at-rest value opens under the salt key, not the master key, and
	// all three formats are present in each table.
	formats := map[string]map[litellm.Format]bool{}
	for _, v := range res.AtRest {
		var js []byte
		switch v.Table {
		case "LiteLLM_ProxyModelTable":
			err = conn.QueryRow(ctx, `SELECT litellm_params FROM "LiteLLM_ProxyModelTable" WHERE model_id = $1`, v.Row).Scan(&js)
		case "LiteLLM_CredentialsTable":
			err = conn.QueryRow(ctx, `SELECT credential_values FROM "LiteLLM_CredentialsTable" WHERE credential_id = $1`, v.Row).Scan(&js)
		case "LiteLLM_Config":
			err = conn.QueryRow(ctx, `SELECT param_value FROM "LiteLLM_Config" WHERE param_name = $1`, v.Row).Scan(&js)
		default:
			continue // metadata callback_vars: checked by the gateway tests
		}
		if err != nil {
			t.Fatalf("%s %s: %v", v.Table, v.Row, err)
		}
		var m map[string]any
		if err := json.Unmarshal(js, &m); err != nil {
			t.Fatal(err)
		}
		ct, _ := m[v.Field].(string)
		plain, f, err := litellm.Decrypt(salt, ct)
		// Standard base64 without '+' or '/' reads as URL-safe.
		sameFormat := f == v.Format || v.Format == litellm.FormatLegacyStd && f == litellm.FormatLegacy && !strings.ContainsAny(ct, "+/")
		if err != nil || string(plain) != v.Plain.Reveal() || !sameFormat {
			t.Errorf("%s %s %s: %v %v", v.Table, v.Row, v.Field, f, err)
		}
		if _, _, err := litellm.Decrypt(master, ct); err == nil {
			t.Errorf("%s %s opens under the master key", v.Table, v.Field)
		}
		if formats[v.Table] == nil {
			formats[v.Table] = map[litellm.Format]bool{}
		}
		formats[v.Table][v.Format] = true
	}
	for _, tbl := range []string{"LiteLLM_ProxyModelTable", "LiteLLM_CredentialsTable"} {
		if len(formats[tbl]) != len(litellm.Formats) {
			t.Errorf("%s formats %v", tbl, formats[tbl])
		}
	}

	// Save and load.
	path := filepath.Join(t.TempDir(), "seed.json")
	if err := res.Save(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("seed file mode %v", fi.Mode().Perm())
	}
	back, err := lab.LoadSeed(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Keys) != len(res.Keys) || len(back.AtRest) != len(res.AtRest) {
		t.Fatal("loaded seed differs in size")
	}
	for i := range res.Keys {
		a, b := res.Keys[i], back.Keys[i]
		if !a.Key.Equal(b.Key) || a.Hash != b.Hash || a.Alias != b.Alias || a.Blocked != b.Blocked ||
			!a.Expires.Equal(b.Expires) || !a.GraceKey.Equal(b.GraceKey) || !a.GraceRevokeAt.Equal(b.GraceRevokeAt) {
			t.Fatalf("key %d differs after load", i)
		}
	}
	// The result itself never prints a key.
	if s := strings.Join([]string{formatAny(res), formatAny(res.Keys[0])}, ""); strings.Contains(s, res.Keys[0].Key.Reveal()) {
		t.Error("seed result prints a raw key")
	}
}

func formatAny(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestSeedWithoutSaltUsesMasterKey(t *testing.T) {
	pg := labtest.Postgres(t)
	ctx := context.Background()
	master, _ := litellm.NewMasterKey()
	res, err := lab.Seed(ctx, pg.URL("postgres"), lab.SeedConfig{MasterKey: master, Keys: 5, MasterKeyLogLiteral: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.EncryptedWithSalt {
		t.Error("EncryptedWithSalt set without a salt key")
	}
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var js []byte
	if err := conn.QueryRow(ctx, `SELECT credential_values FROM "LiteLLM_CredentialsTable" LIMIT 1`).Scan(&js); err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	_ = json.Unmarshal(js, &m)
	if _, _, err := litellm.Decrypt(master, m["api_key"]); err != nil {
		t.Errorf("credential under master key: %v", err)
	}
	if n := count(t, conn, `SELECT count(*) FROM "LiteLLM_SpendLogs" WHERE api_key = $1`, litellm.MasterKeySpendLogKey); n == 0 {
		t.Error("no literal master-key spend logs")
	}
	if _, err := lab.Seed(ctx, pg.URL("postgres"), lab.SeedConfig{}); err == nil {
		t.Error("seed without master key: no error")
	}
}

func TestSeedLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("large seed skipped in -short")
	}
	pg := labtest.Postgres(t)
	ctx := context.Background()
	master, _ := litellm.NewMasterKey()
	n := 10000
	if os.Getenv("LAB_SEED_KEYS") != "" {
		// LAB_SEED_KEYS=100000 measures the large case by hand.
		if _, err := fmt.Sscan(os.Getenv("LAB_SEED_KEYS"), &n); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	res, err := lab.Seed(ctx, pg.URL("postgres"), lab.SeedConfig{MasterKey: master, Keys: n})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seeded %d keys and %d spend logs in %v", len(res.Keys), res.SpendLogs, time.Since(start))
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if c := count(t, conn, `SELECT count(*) FROM "LiteLLM_VerificationToken"`); c != n {
		t.Errorf("%d rows, want %d", c, n)
	}
}
