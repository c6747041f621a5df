package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

// One PostgreSQL cluster serves the package's tests; each test gets its own
// database in it.
var (
	pg      *lab.Postgres
	pgErr   error
	binPath string
	binErr  error
	binOnce sync.Once
)

func TestMain(m *testing.M) {
	var dir string
	if lab.PostgresAvailable() == nil {
		dir, pgErr = os.MkdirTemp("", "gw-pg-")
		if pgErr == nil {
			var port int
			if port, pgErr = lab.FreePort(); pgErr == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				pg, pgErr = lab.StartPostgres(ctx, dir, port)
				cancel()
			}
		}
	} else {
		pgErr = lab.PostgresAvailable()
	}
	code := m.Run()
	if pg != nil {
		_ = pg.Stop()
	}
	if dir != "" {
		os.RemoveAll(dir)
	}
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

var dbSeq struct {
	sync.Mutex
	n int
}

// newDB makes a fresh database for the test and returns its URL.
func newDB(t *testing.T) string {
	t.Helper()
	if pg == nil {
		labtest.Missing(t, fmt.Sprintf("postgresql is not available: %v", pgErr))
	}
	dbSeq.Lock()
	dbSeq.n++
	name := fmt.Sprintf("gw_%s_%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_")), dbSeq.n)
	dbSeq.Unlock()
	if len(name) > 60 {
		name = name[len(name)-60:]
	}
	if err := pg.CreateDatabase(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	return pg.URL(name)
}

// gatewayBinary builds the gateway once for tests that need a real process.
func gatewayBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gw-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "litellm-gateway")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// testGateway is a gateway served in-process through its real handler.
type testGateway struct {
	*server
	url  string
	logs *bytes.Buffer
	pool *pgxpool.Pool
}

func startInProcess(t *testing.T, cfg *config) *testGateway {
	t.Helper()
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	var pool *pgxpool.Pool
	if !cfg.DatabaseURL.IsZero() {
		var err error
		pool, err = connectDB(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
	}
	s := newServer(cfg, pool, log)
	if pool != nil {
		if err := s.decryptAtRest(context.Background(), cfg.encryptionKey()); err != nil {
			t.Fatal(err)
		}
	}
	hs := httptest.NewServer(s.handler())
	t.Cleanup(hs.Close)
	return &testGateway{server: s, url: hs.URL, logs: &logs, pool: pool}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// call makes a request with key (none when zero) and decodes a JSON answer.
func call(t *testing.T, method, url string, key secret.Value, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if !key.IsZero() {
		req.Header.Set("Authorization", "Bearer "+key.Reveal())
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func mustMaster(t *testing.T) secret.Value {
	k, err := litellm.NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func seed(t *testing.T, dbURL string, cfg lab.SeedConfig) *lab.SeedResult {
	t.Helper()
	res, err := lab.Seed(context.Background(), dbURL, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestAuthentication(t *testing.T) {
	dbURL := newDB(t)
	master := mustMaster(t)
	res := seed(t, dbURL, lab.SeedConfig{MasterKey: master, Keys: 60})
	gw := startInProcess(t, &config{MasterKey: master, DatabaseURL: secret.New(dbURL), StoreMasterKeyHash: true})
	models := gw.url + "/v1/models"
	now := time.Now()

	if code, _ := call(t, "GET", models, master, nil); code != 200 {
		t.Errorf("master key: %d", code)
	}
	var ok, refused, graceOK, graceRefused int
	for _, k := range res.Keys {
		code, body := call(t, "GET", models, k.Key, nil)
		want := 401
		if k.Valid(now) {
			want = 200
		}
		if code != want {
			t.Errorf("key %s (blocked %v, expired %v): %d, want %d: %v", k.Alias, k.Blocked, k.Expired, code, want, body)
		}
		if code == 200 {
			ok++
		} else {
			refused++
			if _, has := body["error"]; !has {
				t.Errorf("401 without a JSON error: %v", body)
			}
		}
		if k.GraceKey.IsZero() {
			continue
		}
		code, _ = call(t, "GET", models, k.GraceKey, nil)
		want = 401
		if k.GraceValid(now) && k.Valid(now) {
			want = 200
		}
		if code != want {
			t.Errorf("grace key of %s (revoke_at %v): %d, want %d", k.Alias, k.GraceRevokeAt, code, want)
		}
		if code == 200 {
			graceOK++
		} else {
			graceRefused++
		}
	}
	t.Logf("accepted %d, refused %d, grace accepted %d, grace refused %d", ok, refused, graceOK, graceRefused)
	if ok == 0 || refused == 0 || graceOK == 0 || graceRefused == 0 {
		t.Error("the seed did not exercise every case")
	}

	wrong, _ := litellm.NewVirtualKey()
	for name, key := range map[string]secret.Value{
		"unknown":    wrong,
		"not sk-":    secret.New("hunter2-hunter2"),
		"old master": mustMaster(t),
		"none":       {},
	} {
		if code, _ := call(t, "GET", models, key, nil); code != 401 {
			t.Errorf("%s key: %d, want 401", name, code)
		}
	}
	// The error never echoes the key that was sent.
	_, body := call(t, "GET", models, wrong, nil)
	if b, _ := json.Marshal(body); bytes.Contains(b, []byte(wrong.Reveal())) {
		t.Error("error body contains the key")
	}
}

// A grace row stops working at revoke_at, even for a cached lookup.
func TestGraceRowEndsAtRevokeAt(t *testing.T) {
	dbURL := newDB(t)
	master := mustMaster(t)
	res := seed(t, dbURL, lab.SeedConfig{MasterKey: master, Keys: 5})
	gw := startInProcess(t, &config{MasterKey: master, DatabaseURL: secret.New(dbURL)})
	k := res.Keys[0]
	old, _ := litellm.NewVirtualKey()
	revoke := time.Now().UTC().Add(1500 * time.Millisecond)
	if _, err := gw.pool.Exec(context.Background(), `INSERT INTO "LiteLLM_DeprecatedVerificationToken"(id, token, active_token_id, revoke_at)
		VALUES ('g1', $1, $2, $3)`, litellm.HashToken(old.Reveal()), k.Hash, revoke); err != nil {
		t.Fatal(err)
	}
	if code, _ := call(t, "GET", gw.url+"/v1/models", old, nil); code != 200 {
		t.Fatalf("grace key before revoke_at: %d", code)
	}
	time.Sleep(time.Until(revoke) + 100*time.Millisecond)
	if code, _ := call(t, "GET", gw.url+"/v1/models", old, nil); code != 401 {
		t.Fatalf("grace key after revoke_at: %d", code)
	}
}

// LiteLLM caches key lookups per instance: a key blocked or deleted in the
// database while the proxy runs stays accepted until it restarts.
func TestKeyCacheUntilRestart(t *testing.T) {
	dbURL := newDB(t)
	master := mustMaster(t)
	res := seed(t, dbURL, lab.SeedConfig{MasterKey: master, Keys: 5})
	cfg := &config{MasterKey: master, DatabaseURL: secret.New(dbURL)}
	gw := startInProcess(t, cfg)
	k := res.Keys[1]
	if !k.Valid(time.Now()) {
		t.Fatal("seeded key 1 is expected valid")
	}
	if code, _ := call(t, "GET", gw.url+"/v1/models", k.Key, nil); code != 200 {
		t.Fatalf("before: %d", code)
	}
	if _, err := gw.pool.Exec(context.Background(), `UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE token = $1`, k.Hash); err != nil {
		t.Fatal(err)
	}
	if code, _ := call(t, "GET", gw.url+"/v1/models", k.Key, nil); code != 200 {
		t.Errorf("cached key after blocking in the database: %d, want 200 until restart", code)
	}
	restarted := startInProcess(t, cfg)
	if code, _ := call(t, "GET", restarted.url+"/v1/models", k.Key, nil); code != 401 {
		t.Errorf("after restart: %d, want 401", code)
	}
}

func TestSpendLogs(t *testing.T) {
	dbURL := newDB(t)
	master := mustMaster(t)
	res := seed(t, dbURL, lab.SeedConfig{MasterKey: master, Keys: 5, SpendLogsPerKey: -1})
	gw := startInProcess(t, &config{MasterKey: master, DatabaseURL: secret.New(dbURL), StoreMasterKeyHash: true})
	k := res.Keys[2] // valid, all models
	chat := map[string]any{"model": "gpt-4o", "messages": []any{map[string]any{"role": "user", "content": "hello"}}}
	code, body := call(t, "POST", gw.url+"/chat/completions", k.Key, chat)
	if code != 200 {
		t.Fatalf("chat: %d %v", code, body)
	}
	id, _ := body["id"].(string)
	if code, _ := call(t, "POST", gw.url+"/v1/chat/completions", master, chat); code != 200 {
		t.Fatalf("chat with master key: %d", code)
	}
	ctx := context.Background()
	var apiKey, ip, model string
	var tokens int
	var start, end time.Time
	err := gw.pool.QueryRow(ctx, `SELECT api_key, requester_ip_address, model, total_tokens, "startTime", "endTime"
		FROM "LiteLLM_SpendLogs" WHERE request_id = $1`, id).Scan(&apiKey, &ip, &model, &tokens, &start, &end)
	if err != nil {
		t.Fatal(err)
	}
	if apiKey != k.Hash || ip != "127.0.0.1" || model != "gpt-4o" || tokens == 0 || end.Before(start) {
		t.Errorf("spend log: api_key match %v, ip %q, model %q, tokens %d", apiKey == k.Hash, ip, model, tokens)
	}
	if d := time.Since(start); d < -time.Minute || d > time.Minute {
		t.Errorf("startTime %v is not UTC now", start)
	}
	var n int
	if err := gw.pool.QueryRow(ctx, `SELECT count(*) FROM "LiteLLM_SpendLogs" WHERE api_key = $1 AND "startTime" > $2`,
		litellm.HashToken(master.Reveal()), time.Now().UTC().Add(-time.Minute)).Scan(&n); err != nil || n != 1 {
		t.Errorf("master-key spend log rows: %d, %v", n, err)
	}
	// A key limited to some models cannot use others.
	var limited lab.SeededKey
	for _, sk := range res.Keys {
		if sk.Valid(time.Now()) {
			var models []string
			_ = gw.pool.QueryRow(ctx, `SELECT models FROM "LiteLLM_VerificationToken" WHERE token = $1`, sk.Hash).Scan(&models)
			if len(models) > 0 && !contains(models, "text-embedding-3-small") {
				limited = sk
				break
			}
		}
	}
	if !limited.Key.IsZero() {
		chat["model"] = "text-embedding-3-small"
		if code, _ := call(t, "POST", gw.url+"/chat/completions", limited.Key, chat); code != 401 {
			t.Errorf("model outside the key's list: %d, want 401", code)
		}
	}
}

func readiness(t *testing.T, url string) map[string]any {
	t.Helper()
	code, body := call(t, "GET", url+"/health/readiness", secret.Value{}, nil)
	if code != 200 {
		t.Fatalf("readiness: %d", code)
	}
	return body
}

func TestAtRestDecryption(t *testing.T) {
	master := mustMaster(t)
	salt := secret.New("salt-k3y-do-not-rotate-0123456789")
	newMaster := mustMaster(t)
	const rows = 8 + 4 + 1 // models, credentials, environment_variables

	cases := []struct {
		name         string
		seedSalt     secret.Value
		gwMaster     secret.Value
		gwSalt       secret.Value
		undecrypt    int
		keySource    string
		expectLogged bool
	}{
		{"salt key set, same salt", salt, master, salt, 0, "salt_key", false},
		{"salt key set, master rotated", salt, newMaster, salt, 0, "salt_key", false},
		{"salt key set but not given to the proxy", salt, master, secret.Value{}, rows, "master_key", true},
		{"no salt key, same master", secret.Value{}, master, secret.Value{}, 0, "master_key", false},
		{"no salt key, master rotated without re-encryption", secret.Value{}, newMaster, secret.Value{}, rows, "master_key", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dbURL := newDB(t)
			seed(t, dbURL, lab.SeedConfig{MasterKey: master, SaltKey: c.seedSalt, Keys: 3})
			gw := startInProcess(t, &config{MasterKey: c.gwMaster, SaltKey: c.gwSalt, DatabaseURL: secret.New(dbURL)})
			body := readiness(t, gw.url)
			if body["db"] != "connected" {
				t.Errorf("db %v", body["db"])
			}
			if got := int(body["undecryptable_rows"].(float64)); got != c.undecrypt {
				t.Errorf("undecryptable_rows %d, want %d", got, c.undecrypt)
			}
			if body["encrypted_with"] != c.keySource {
				t.Errorf("encrypted_with %v, want %s", body["encrypted_with"], c.keySource)
			}
			logs := gw.logs.String()
			if strings.Contains(logs, "Did your master_key/salt key change recently?") != c.expectLogged {
				t.Errorf("LiteLLM's decrypt error logged: %v, want %v", !c.expectLogged, c.expectLogged)
			}
			if c.expectLogged && !strings.Contains(logs, `table=LiteLLM_CredentialsTable row=`) {
				t.Errorf("no line naming table and row:\n%s", logs)
			}
			for _, k := range []secret.Value{master, salt, newMaster} {
				if strings.Contains(logs, k.Reveal()) {
					t.Error("a key reached the log")
				}
			}
		})
	}
}

func TestKeyManagement(t *testing.T) {
	dbURL := newDB(t)
	master := mustMaster(t)
	res := seed(t, dbURL, lab.SeedConfig{MasterKey: master, Keys: 5})
	gw := startInProcess(t, &config{MasterKey: master, DatabaseURL: secret.New(dbURL)})

	code, body := call(t, "POST", gw.url+"/key/generate", master, map[string]any{
		"key_alias": "svc-new", "duration": "90d", "models": []string{"gpt-4o"},
		"metadata": map[string]any{"owner": "ops"}, "max_budget": 10.5, "team_id": "team-00", "user_id": "user-001",
	})
	if code != 200 {
		t.Fatalf("generate: %d %v", code, body)
	}
	raw, _ := body["key"].(string)
	if !strings.HasPrefix(raw, "sk-") || len(raw) != 25 || body["token"] != litellm.HashToken(raw) || body["key_name"] != litellm.KeyName(raw) {
		t.Fatalf("generate answer: key len %d, token ok %v", len(raw), body["token"] == litellm.HashToken(raw))
	}
	newKey := secret.New(raw)
	code, body = call(t, "GET", gw.url+"/v1/models", newKey, nil)
	if code != 200 {
		t.Fatalf("new key: %d", code)
	}
	if data, _ := body["data"].([]any); len(data) != 1 {
		t.Errorf("new key sees %d models, want 1", len(data))
	}
	var expires time.Time
	if err := gw.pool.QueryRow(context.Background(), `SELECT expires FROM "LiteLLM_VerificationToken" WHERE token = $1`, litellm.HashToken(raw)).Scan(&expires); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(expires); d < 89*24*time.Hour || d > 91*24*time.Hour {
		t.Errorf("expires in %v, want 90 days", d)
	}

	// Aliases are unique.
	if code, _ := call(t, "POST", gw.url+"/key/generate", master, map[string]any{"key_alias": "svc-new"}); code != 400 {
		t.Errorf("duplicate alias: %d, want 400", code)
	}
	// Only the master key manages keys.
	if code, _ := call(t, "POST", gw.url+"/key/generate", newKey, map[string]any{}); code != 401 {
		t.Errorf("generate with a virtual key: %d, want 401", code)
	}
	// A custom key must start with sk-.
	if code, _ := call(t, "POST", gw.url+"/key/generate", master, map[string]any{"key": "abc"}); code != 400 {
		t.Errorf("custom key without sk-: %d, want 400", code)
	}

	code, body = call(t, "GET", gw.url+"/key/info?key="+raw, master, nil)
	info, _ := body["info"].(map[string]any)
	if code != 200 || info["key_alias"] != "svc-new" || body["key"] == raw {
		t.Errorf("key info: %d %v", code, body)
	}
	if code, _ := call(t, "GET", gw.url+"/key/info", newKey, nil); code != 200 {
		t.Errorf("key info about itself: %d", code)
	}
	if code, _ := call(t, "GET", gw.url+"/key/info?key="+res.Keys[1].Hash, newKey, nil); code != 403 {
		t.Errorf("key info about another key: %d, want 403", code)
	}

	// Delete by alias and by key; the deleting instance forgets them at once.
	code, body = call(t, "POST", gw.url+"/key/delete", master, map[string]any{"key_aliases": []string{"svc-new"}, "keys": []string{res.Keys[1].Key.Reveal()}})
	if code != 200 {
		t.Fatalf("delete: %d %v", code, body)
	}
	if code, _ := call(t, "GET", gw.url+"/v1/models", newKey, nil); code != 401 {
		t.Errorf("deleted key: %d, want 401", code)
	}
	var n int
	if err := gw.pool.QueryRow(context.Background(), `SELECT count(*) FROM "LiteLLM_DeletedVerificationToken" WHERE token = ANY($1)`,
		[]string{litellm.HashToken(raw), res.Keys[1].Hash}).Scan(&n); err != nil || n != 2 {
		t.Errorf("audit rows %d, %v", n, err)
	}
	if code, _ := call(t, "POST", gw.url+"/key/delete", master, map[string]any{"key_aliases": []string{"no-such"}}); code != 404 {
		t.Errorf("delete unknown: %d, want 404", code)
	}
}

func TestReadinessWithoutDatabase(t *testing.T) {
	master := mustMaster(t)
	gw := startInProcess(t, &config{MasterKey: master})
	if body := readiness(t, gw.url); body["db"] != "Not connected" {
		t.Errorf("db %v", body["db"])
	}
	if code, _ := call(t, "GET", gw.url+"/v1/models", master, nil); code != 200 {
		t.Errorf("master key without a database: %d", code)
	}
	k, _ := litellm.NewVirtualKey()
	if code, _ := call(t, "GET", gw.url+"/v1/models", k, nil); code != 401 {
		t.Errorf("virtual key without a database: %d", code)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, fmt.Sprintf("c%d.yaml", time.Now().UnixNano()))
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	fromFile := "sk-" + strings.Repeat("a", 64)
	fromEnv := "sk-" + strings.Repeat("b", 64)
	other := "sk-" + strings.Repeat("c", 64)

	cfg, err := loadConfig(write("general_settings:\n  master_key: "+fromFile+"\n"), env(map[string]string{"LITELLM_MASTER_KEY": fromEnv}))
	if err != nil || cfg.MasterKey.Reveal() != fromFile {
		t.Errorf("config value must win over the env var: %v", err)
	}
	cfg, err = loadConfig(write("general_settings:\n  master_key: os.environ/OTHER\n"), env(map[string]string{"LITELLM_MASTER_KEY": fromEnv, "OTHER": other}))
	if err != nil || cfg.MasterKey.Reveal() != other {
		t.Errorf("os.environ/OTHER: %v", err)
	}
	cfg, err = loadConfig("", env(map[string]string{"LITELLM_MASTER_KEY": fromEnv, "DATABASE_URL": "postgres://x/y", "LITELLM_SALT_KEY": "salty"}))
	if err != nil || cfg.MasterKey.Reveal() != fromEnv || cfg.DatabaseURL.Reveal() != "postgres://x/y" || cfg.encryptionKey().Reveal() != "salty" {
		t.Errorf("env only: %v", err)
	}
	cfg, err = loadConfig(write("model_list:\n  - model_name: gpt-4o\n    litellm_params: {model: openai/gpt-4o}\ngeneral_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n  database_url: os.environ/DB\n  disable_adding_master_key_hash_to_db: true\n"),
		env(map[string]string{"LITELLM_MASTER_KEY": fromEnv, "DB": "postgres://a/b", "DATABASE_URL": "postgres://c/d"}))
	if err != nil || cfg.DatabaseURL.Reveal() != "postgres://a/b" || cfg.StoreMasterKeyHash || len(cfg.Models) != 1 || cfg.encryptionKey().Reveal() != fromEnv {
		t.Errorf("full config: %+v %v", cfg, err)
	}
	for name, tc := range map[string]struct {
		file string
		env  map[string]string
	}{
		"nothing":         {"", nil},
		"empty env":       {"", map[string]string{"LITELLM_MASTER_KEY": ""}},
		"blank env":       {"", map[string]string{"LITELLM_MASTER_KEY": "   "}},
		"default sk-1234": {"", map[string]string{"LITELLM_MASTER_KEY": "sk-1234"}},
		"sk-1234 in file": {"general_settings:\n  master_key: sk-1234\n", map[string]string{"LITELLM_MASTER_KEY": fromEnv}},
		"unset env ref":   {"general_settings:\n  master_key: os.environ/NOPE\n", map[string]string{"LITELLM_MASTER_KEY": fromEnv}},
		"empty env ref":   {"general_settings:\n  master_key: os.environ/EMPTY\n", map[string]string{"EMPTY": ""}},
		"bad yaml":        {"general_settings: [\n", map[string]string{"LITELLM_MASTER_KEY": fromEnv}},
	} {
		p := ""
		if tc.file != "" {
			p = write(tc.file)
		}
		if _, err := loadConfig(p, env(tc.env)); err == nil {
			t.Errorf("%s: started without a usable master key", name)
		}
	}
}

// gwProcess is a gateway running as its own process.
type gwProcess struct {
	url    string
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	mu     *sync.Mutex
	done   chan struct{} // closed when the process has exited
}

func (p *gwProcess) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// startProcess runs the gateway binary and waits until it is alive.
func startProcess(t *testing.T, env []string, args ...string) *gwProcess {
	t.Helper()
	port, err := lab.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := &gwProcess{
		url:    fmt.Sprintf("http://127.0.0.1:%d", port),
		stderr: &bytes.Buffer{},
		mu:     &sync.Mutex{},
		done:   make(chan struct{}),
	}
	p.cmd = exec.Command(gatewayBinary(t), append([]string{"--host", "127.0.0.1", "--port", fmt.Sprint(port)}, args...)...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	p.cmd.Stderr = lockedWriter{p.mu, p.stderr}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("gateway exited: %s", p.logs())
		default:
		}
		resp, err := http.Get(p.url + "/health/liveliness")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("gateway did not come up: %s", p.logs())
	return nil
}

func TestProcessRefusesToStartWithoutMasterKey(t *testing.T) {
	bin := gatewayBinary(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte("general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, env := range map[string][]string{
		"unset":   nil,
		"empty":   {"LITELLM_MASTER_KEY="},
		"sk-1234": {"LITELLM_MASTER_KEY=sk-1234"},
	} {
		for _, args := range [][]string{nil, {"--config", cfgPath}} {
			port, _ := lab.FreePort()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			cmd := exec.CommandContext(ctx, bin, append([]string{"--host", "127.0.0.1", "--port", fmt.Sprint(port)}, args...)...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			timedOut := ctx.Err() != nil
			cancel()
			if err == nil {
				t.Errorf("%s %v: exited 0", name, args)
				continue
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 || timedOut {
				t.Errorf("%s %v: %v (did it start?)", name, args, err)
			}
			if !strings.Contains(string(out), "refusing to start") {
				t.Errorf("%s %v: no clear log: %s", name, args, out)
			}
		}
	}
}

func TestProcessServesSeededDatabase(t *testing.T) {
	dbURL := newDB(t)
	master := mustMaster(t)
	res := seed(t, dbURL, lab.SeedConfig{MasterKey: master, Keys: 5})
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte("general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n  database_url: os.environ/DATABASE_URL\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gw := startProcess(t, []string{"LITELLM_MASTER_KEY=" + master.Reveal(), "DATABASE_URL=" + dbURL}, "--config", cfgPath)
	url := gw.url
	if code, _ := call(t, "GET", url+"/v1/models", res.Keys[1].Key, nil); code != 200 {
		t.Errorf("seeded key: %d", code)
	}
	if code, _ := call(t, "GET", url+"/v1/models", master, nil); code != 200 {
		t.Errorf("master key: %d", code)
	}
	if body := readiness(t, url); body["db"] != "connected" || body["undecryptable_rows"].(float64) != 0 {
		t.Errorf("readiness %v", body)
	}
	if strings.Contains(gw.logs(), master.Reveal()) {
		t.Error("master key in the log")
	}
	// The gateway created nothing but what LiteLLM has: check a seeded row
	// is still intact after its schema step.
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM "LiteLLM_VerificationToken"`).Scan(&n); err != nil || n != 5 {
		t.Errorf("token rows %d, %v", n, err)
	}
}

func TestProcessGracefulShutdown(t *testing.T) {
	master := mustMaster(t)
	gw := startProcess(t, []string{"LITELLM_MASTER_KEY=" + master.Reveal()}, "--shutdown-delay", "1s")
	url := gw.url

	type result struct {
		code int
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		b, _ := json.Marshal(map[string]any{"model": "gpt-4o", "messages": []any{}, "mock_delay": 1.5})
		req, _ := http.NewRequest("POST", url+"/chat/completions", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+master.Reveal())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			slow <- result{err: err}
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		slow <- result{code: resp.StatusCode}
	}()
	time.Sleep(200 * time.Millisecond)
	if err := gw.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	resp, err := http.Get(url + "/health/liveliness")
	if err != nil {
		t.Fatalf("liveliness during shutdown: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("liveliness during shutdown: %d, want 503", resp.StatusCode)
	}
	r := <-slow
	if r.err != nil || r.code != 200 {
		t.Errorf("in-flight request: %d %v", r.code, r.err)
	}
	select {
	case <-gw.done:
		if !gw.cmd.ProcessState.Success() {
			t.Errorf("exit status %v: %s", gw.cmd.ProcessState, gw.logs())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not exit after draining")
	}
	if !strings.Contains(gw.logs(), "shutdown complete") {
		t.Errorf("no clean shutdown in the log: %s", gw.logs())
	}
}

// Readiness answers 200 while the database is down; only its db field
// tells.
func TestReadinessDatabaseDown(t *testing.T) {
	own := labtest.Postgres(t)
	master := mustMaster(t)
	gw := startInProcess(t, &config{MasterKey: master, DatabaseURL: secret.New(own.URL("postgres"))})
	if body := readiness(t, gw.url); body["db"] != "connected" {
		t.Fatalf("db %v", body["db"])
	}
	if err := own.Stop(); err != nil {
		t.Fatal(err)
	}
	if body := readiness(t, gw.url); body["db"] != "disconnected" {
		t.Errorf("db %v with the database stopped", body["db"])
	}
}

func TestMasterKeyLogLiteral(t *testing.T) {
	dbURL := newDB(t)
	master := mustMaster(t)
	seed(t, dbURL, lab.SeedConfig{MasterKey: master, Keys: 1, SpendLogsPerKey: -1})
	gw := startInProcess(t, &config{MasterKey: master, DatabaseURL: secret.New(dbURL), StoreMasterKeyHash: false})
	code, body := call(t, "POST", gw.url+"/chat/completions", master, map[string]any{"model": "gpt-4o", "messages": []any{}})
	if code != 200 {
		t.Fatalf("chat: %d", code)
	}
	var apiKey string
	if err := gw.pool.QueryRow(context.Background(), `SELECT api_key FROM "LiteLLM_SpendLogs" WHERE request_id = $1`, body["id"]).Scan(&apiKey); err != nil {
		t.Fatal(err)
	}
	if apiKey != litellm.MasterKeySpendLogKey {
		t.Errorf("api_key %q, want %q", apiKey, litellm.MasterKeySpendLogKey)
	}
}
