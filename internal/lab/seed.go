package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

// SeedConfig says what Seed puts into a LiteLLM database.
type SeedConfig struct {
	// MasterKey is the proxy's master key (required). Requests made with it
	// appear in the spend logs, and it encrypts the at-rest rows when
	// SaltKey is empty, as LiteLLM does.
	MasterKey secret.Value
	// SaltKey is LITELLM_SALT_KEY; when set it encrypts the at-rest rows.
	SaltKey secret.Value
	// Keys is the number of virtual keys (default 50).
	Keys int
	// Teams is the number of teams the keys are spread over (default 5).
	Teams int
	// SpendLogsPerKey is the number of spend-log rows per virtual key
	// (default 2).
	SpendLogsPerKey int
	// MasterKeyRequests is the number of spend-log rows for requests made
	// with the master key (default 30), spread over MasterKeyIPs and the
	// last few hours.
	MasterKeyRequests int
	// MasterKeyIPs are the caller addresses of those requests (default
	// three documentation addresses).
	MasterKeyIPs []string
	// MasterKeyLogLiteral logs master-key requests with api_key
	// "litellm_proxy_master_key" instead of the key's hash, as a proxy set
	// not to store that hash does.
	MasterKeyLogLiteral bool
	// Now is the reference time for expiry, grace periods and logs
	// (default the current time).
	Now time.Time
}

// SeededKey is one virtual key Seed wrote, with what a test needs to know
// about whether the proxy should accept it.
type SeededKey struct {
	Key     secret.Value
	Hash    string
	Alias   string // empty for keys without an alias
	TeamID  string
	UserID  string
	Blocked bool
	// Expires is the key's expiry, zero when it never expires; Expired
	// reports whether it was already past at seeding time.
	Expires time.Time
	Expired bool
	// JWTMapped reports a row in "LiteLLM_JWTKeyMapping" for this key.
	JWTMapped bool
	// CallbackVars reports encrypted callback_vars in the key's metadata.
	CallbackVars bool
	// GraceKey is an earlier value of this key that stays valid until
	// GraceRevokeAt through "LiteLLM_DeprecatedVerificationToken"; zero
	// when the key has no grace row.
	GraceKey      secret.Value
	GraceHash     string
	GraceRevokeAt time.Time
}

// Valid reports whether the proxy should accept the key at time t.
func (k SeededKey) Valid(t time.Time) bool {
	return !k.Blocked && (k.Expires.IsZero() || t.Before(k.Expires))
}

// GraceValid reports whether the proxy should accept GraceKey at time t.
func (k SeededKey) GraceValid(t time.Time) bool {
	return !k.GraceKey.IsZero() && t.Before(k.GraceRevokeAt)
}

// SeededValue is one encrypted value at rest.
type SeededValue struct {
	Table  string // unquoted table name, such as LiteLLM_ProxyModelTable
	Row    string // the row's primary key
	Field  string // the JSON field within the row's JSON column
	Format litellm.Format
	Plain  secret.Value
}

// SeedResult is what Seed wrote.
type SeedResult struct {
	Now           time.Time
	Keys          []SeededKey
	MasterKeyHash string
	// EncryptedWithSalt reports whether the at-rest rows are under the salt
	// key (true) or the master key (false).
	EncryptedWithSalt bool
	AtRest            []SeededValue
	SpendLogs         int
	MasterKeyIPs      []string
}

var defaultMasterKeyIPs = []string{"203.0.113.7", "203.0.113.45", "198.51.100.23"}

// seededTables are emptied before each seeding, in one statement so the
// foreign key between them does not get in the way.
const seededTables = `"LiteLLM_JWTKeyMapping", "LiteLLM_DeprecatedVerificationToken",
	"LiteLLM_DeletedVerificationToken", "LiteLLM_VerificationToken", "LiteLLM_SpendLogs",
	"LiteLLM_ProxyModelTable", "LiteLLM_CredentialsTable", "LiteLLM_Config",
	"LiteLLM_TeamTable", "LiteLLM_UserTable"`

// Seed creates LiteLLM's schema in the database at dbURL and fills it with
// virtual keys, teams, users, grace rows, JWT mappings, spend logs and
// encrypted model, credential and configuration rows in all three at-rest
// formats. It replaces whatever an earlier Seed wrote, in one transaction.
// Rows go in with COPY, so 100,000 keys take seconds.
func Seed(ctx context.Context, dbURL string, cfg SeedConfig) (*SeedResult, error) {
	if cfg.MasterKey.IsZero() {
		return nil, errors.New("seed litellm database: master key is empty")
	}
	if cfg.Keys <= 0 {
		cfg.Keys = 50
	}
	if cfg.Teams <= 0 {
		cfg.Teams = 5
	}
	if cfg.SpendLogsPerKey < 0 {
		cfg.SpendLogsPerKey = 0
	} else if cfg.SpendLogsPerKey == 0 {
		cfg.SpendLogsPerKey = 2
	}
	if cfg.MasterKeyRequests <= 0 {
		cfg.MasterKeyRequests = 30
	}
	if len(cfg.MasterKeyIPs) == 0 {
		cfg.MasterKeyIPs = defaultMasterKeyIPs
	}
	if cfg.Now.IsZero() {
		cfg.Now = time.Now()
	}
	// LiteLLM's columns are timestamps without time zone holding UTC.
	now := cfg.Now.UTC().Truncate(time.Millisecond)
	encKey := cfg.MasterKey
	if !cfg.SaltKey.IsZero() {
		encKey = cfg.SaltKey
	}
	res := &SeedResult{
		Now:               now,
		MasterKeyHash:     litellm.HashToken(cfg.MasterKey.Reveal()),
		EncryptedWithSalt: !cfg.SaltKey.IsZero(),
		MasterKeyIPs:      append([]string(nil), cfg.MasterKeyIPs...),
	}

	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("seed litellm database: connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, litellm.SchemaSQL); err != nil {
		return nil, fmt.Errorf("seed litellm database: create schema: %w", err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("seed litellm database: %w", err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, "TRUNCATE "+seededTables); err != nil {
		return nil, fmt.Errorf("seed litellm database: empty tables: %w", err)
	}

	s := &seeder{tx: tx, cfg: cfg, now: now, encKey: encKey, res: res}
	for _, step := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"teams and users", s.teamsAndUsers},
		{"virtual keys", s.keys},
		{"spend logs", s.spendLogs},
		{"models", s.models},
		{"credentials", s.credentials},
		{"config", s.config},
	} {
		if err := step.fn(ctx); err != nil {
			return nil, fmt.Errorf("seed litellm database: %s: %w", step.name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("seed litellm database: commit: %w", err)
	}
	if _, err := conn.Exec(ctx, `ANALYZE "LiteLLM_VerificationToken", "LiteLLM_DeprecatedVerificationToken"`); err != nil {
		return nil, fmt.Errorf("seed litellm database: analyze: %w", err)
	}
	return res, nil
}

type seeder struct {
	tx     pgx.Tx
	cfg    SeedConfig
	now    time.Time
	encKey secret.Value
	res    *SeedResult
}

func teamID(i int) string { return fmt.Sprintf("team-%02d", i) }
func userID(i int) string { return fmt.Sprintf("user-%03d", i) }

const seedUsers = 12

var seedModels = [][]string{
	{"gpt-4o", "gpt-4o-mini"},
	{"claude-3-5-sonnet"},
	{}, // all models
	{"gpt-4o", "claude-3-5-sonnet", "text-embedding-3-small"},
}

// encrypt encrypts plain in f under the seeding key and records it.
func (s *seeder) encrypt(table, row, field string, plain string, f litellm.Format) (string, error) {
	ct, err := litellm.Encrypt(s.encKey, []byte(plain), f)
	if err != nil {
		return "", err
	}
	s.res.AtRest = append(s.res.AtRest, SeededValue{Table: table, Row: row, Field: field, Format: f, Plain: secret.New(plain)})
	return ct, nil
}

// callbackVars is LiteLLM's per-key or per-team logging settings, with the
// credential values encrypted.
func (s *seeder) callbackVars(table, row string, f litellm.Format) (map[string]any, error) {
	pub, err := s.encrypt(table, row, "metadata.logging.callback_vars.langfuse_public_key", "pk-lf-"+row, f)
	if err != nil {
		return nil, err
	}
	sec, err := s.encrypt(table, row, "metadata.logging.callback_vars.langfuse_secret_key", "sk-lf-"+randHex(12), f)
	if err != nil {
		return nil, err
	}
	return map[string]any{"logging": []any{map[string]any{
		"callback_name": "langfuse",
		"callback_type": "success",
		"callback_vars": map[string]any{
			"langfuse_public_key": pub,
			"langfuse_secret_key": sec,
			"langfuse_host":       "https://langfuse.example.invalid",
		},
	}}}, nil
}

func (s *seeder) teamsAndUsers(ctx context.Context) error {
	var rows [][]any
	for t := 0; t < s.cfg.Teams; t++ {
		meta := map[string]any{"cost_center": fmt.Sprintf("cc-%d", 100+t)}
		if t%2 == 0 {
			cv, err := s.callbackVars("LiteLLM_TeamTable", teamID(t), litellm.Formats[t%len(litellm.Formats)])
			if err != nil {
				return err
			}
			for k, v := range cv {
				meta[k] = v
			}
		}
		mj, _ := json.Marshal(meta)
		rows = append(rows, []any{teamID(t), fmt.Sprintf("Team %d", t), mj, []string{}, s.now, s.now})
	}
	if _, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_TeamTable"},
		[]string{"team_id", "team_alias", "metadata", "models", "created_at", "updated_at"},
		pgx.CopyFromRows(rows)); err != nil {
		return err
	}
	rows = rows[:0]
	for u := 0; u < seedUsers; u++ {
		meta := map[string]any{}
		if u == 0 {
			cv, err := s.callbackVars("LiteLLM_UserTable", userID(u), litellm.FormatV3GCM)
			if err != nil {
				return err
			}
			meta = cv
		}
		mj, _ := json.Marshal(meta)
		rows = append(rows, []any{userID(u), teamID(u % s.cfg.Teams), fmt.Sprintf("user%d@example.invalid", u), "internal_user", mj, s.now, s.now})
	}
	_, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_UserTable"},
		[]string{"user_id", "team_id", "user_email", "user_role", "metadata", "created_at", "updated_at"},
		pgx.CopyFromRows(rows))
	return err
}

// keys writes the virtual keys. Which key gets which trait follows its
// index, so every trait shows up even among 50 keys:
//
//	i%7 == 3   no alias
//	i%13 == 5  blocked
//	i%17 == 6  expired; i%5 == 0 (and not expired) expires in 30 days
//	i%11 == 2  grace row for an earlier value (revoke_at ahead for even i, past for odd)
//	i%19 == 4  JWT mapping
//	i%9 == 1   encrypted callback_vars in metadata
func (s *seeder) keys(ctx context.Context) error {
	n := s.cfg.Keys
	keys := make([]SeededKey, n)
	tokenRows := make([][]any, 0, n)
	var graceRows, jwtRows [][]any
	for i := 0; i < n; i++ {
		raw, err := litellm.NewVirtualKey()
		if err != nil {
			return err
		}
		k := SeededKey{
			Key:    raw,
			Hash:   litellm.HashToken(raw.Reveal()),
			TeamID: teamID(i % s.cfg.Teams),
		}
		if i%7 != 3 {
			k.Alias = fmt.Sprintf("svc-%s-%05d", k.TeamID, i)
		}
		if i%3 != 0 {
			k.UserID = userID(i % seedUsers)
		}
		k.Blocked = i%13 == 5
		switch {
		case i%17 == 6:
			k.Expires = s.now.Add(-time.Duration(1+i%48) * time.Hour)
			k.Expired = true
		case i%5 == 0:
			k.Expires = s.now.Add(30 * 24 * time.Hour)
		}
		meta := map[string]any{"environment": []string{"prod", "staging"}[i%2]}
		if i%9 == 1 {
			cv, err := s.callbackVars("LiteLLM_VerificationToken", k.Hash, litellm.Formats[i%len(litellm.Formats)])
			if err != nil {
				return err
			}
			for kk, v := range cv {
				meta[kk] = v
			}
			k.CallbackVars = true
		}
		mj, err := json.Marshal(meta)
		if err != nil {
			return err
		}
		created := s.now.Add(-time.Duration(24*(1+i%90)) * time.Hour)
		var expires, blocked, alias, user, maxBudget, lastRot any
		if !k.Expires.IsZero() {
			expires = k.Expires
		}
		if k.Blocked {
			blocked = true
		} else if i%2 == 0 {
			blocked = false // LiteLLM leaves blocked NULL on most keys
		}
		if k.Alias != "" {
			alias = k.Alias
		}
		if k.UserID != "" {
			user = k.UserID
		}
		if i%4 == 0 {
			maxBudget = float64(50 + i%10*25)
		}
		rotations := 0
		if i%11 == 2 {
			rotations = 1
			lastRot = s.now.Add(-time.Hour)
		}
		tokenRows = append(tokenRows, []any{
			k.Hash, litellm.KeyName(raw.Reveal()), alias, float64(i%97) * 0.37, expires,
			seedModels[i%len(seedModels)], mj, blocked, user, k.TeamID, maxBudget,
			created, created, "default_user_id", "default_user_id", rotations, lastRot,
		})
		if i%11 == 2 {
			old, err := litellm.NewVirtualKey()
			if err != nil {
				return err
			}
			k.GraceKey = old
			k.GraceHash = litellm.HashToken(old.Reveal())
			if i%2 == 0 {
				k.GraceRevokeAt = s.now.Add(time.Duration(1+i%24) * time.Hour)
			} else {
				k.GraceRevokeAt = s.now.Add(-time.Duration(1+i%24) * time.Hour)
			}
			graceRows = append(graceRows, []any{newUUID(), k.GraceHash, k.Hash, k.GraceRevokeAt, s.now.Add(-time.Hour)})
		}
		if i%19 == 4 {
			k.JWTMapped = true
			jwtRows = append(jwtRows, []any{newUUID(), "sub", fmt.Sprintf("service-%05d", i), k.Hash, "workload identity", true, s.now, s.now})
		}
		keys[i] = k
	}
	if _, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_VerificationToken"},
		[]string{"token", "key_name", "key_alias", "spend", "expires", "models", "metadata", "blocked",
			"user_id", "team_id", "max_budget", "created_at", "updated_at", "created_by", "updated_by",
			"rotation_count", "last_rotation_at"},
		pgx.CopyFromRows(tokenRows)); err != nil {
		return err
	}
	if _, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_DeprecatedVerificationToken"},
		[]string{"id", "token", "active_token_id", "revoke_at", "created_at"},
		pgx.CopyFromRows(graceRows)); err != nil {
		return err
	}
	if _, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_JWTKeyMapping"},
		[]string{"id", "jwt_claim_name", "jwt_claim_value", "token", "description", "is_active", "created_at", "updated_at"},
		pgx.CopyFromRows(jwtRows)); err != nil {
		return err
	}
	s.res.Keys = keys
	return nil
}

var spendLogColumns = []string{"request_id", "call_type", "api_key", "spend", "total_tokens", "prompt_tokens",
	"completion_tokens", "startTime", "endTime", "request_duration_ms", "model", "model_group",
	"custom_llm_provider", "user", "metadata", "team_id", "requester_ip_address", "status"}

// spendLogSource feeds COPY without holding every row in memory.
type spendLogSource struct {
	s    *seeder
	i, n int
	row  []any
	err  error
}

func (src *spendLogSource) Next() bool {
	if src.i >= src.n {
		return false
	}
	src.row = src.s.spendLogRow(src.i)
	src.i++
	return true
}
func (src *spendLogSource) Values() ([]any, error) { return src.row, nil }
func (src *spendLogSource) Err() error             { return src.err }

var seedLogModels = []string{"gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"}

func (s *seeder) spendLogRow(j int) []any {
	perKey := s.cfg.SpendLogsPerKey
	nKeyLogs := len(s.res.Keys) * perKey
	var apiKey, ip, user, team string
	var start time.Time
	if j < nKeyLogs {
		k := s.res.Keys[j/perKey]
		apiKey, user, team = k.Hash, k.UserID, k.TeamID
		ip = fmt.Sprintf("10.%d.%d.%d", 20+j/perKey%5, j/perKey/250%250, 1+j/perKey%250)
		start = s.now.Add(-time.Duration(1+j%(72*60)) * time.Minute)
	} else {
		m := j - nKeyLogs
		apiKey = s.res.MasterKeyHash
		if s.cfg.MasterKeyLogLiteral {
			apiKey = litellm.MasterKeySpendLogKey
		}
		ip = s.cfg.MasterKeyIPs[m%len(s.cfg.MasterKeyIPs)]
		user = "default_user_id"
		// Spread over the last six hours, oldest first.
		span := 6 * time.Hour
		start = s.now.Add(-span + time.Duration(m)*span/time.Duration(s.cfg.MasterKeyRequests))
	}
	model := seedLogModels[j%len(seedLogModels)]
	prompt, completion := 100+j%900, 20+j%300
	dur := 300 + j%2000
	status := "success"
	if j%23 == 0 {
		status = "failure"
	}
	var teamArg any
	if team != "" {
		teamArg = team
	}
	return []any{
		fmt.Sprintf("chatcmpl-seed-%08d", j), "acompletion", apiKey,
		float64(prompt+completion) * 0.000002, prompt + completion, prompt, completion,
		start, start.Add(time.Duration(dur) * time.Millisecond), dur, model, model, "openai", user,
		[]byte(`{"user_api_key_alias": null}`), teamArg, ip, status,
	}
}

func (s *seeder) spendLogs(ctx context.Context) error {
	n := len(s.res.Keys)*s.cfg.SpendLogsPerKey + s.cfg.MasterKeyRequests
	_, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_SpendLogs"}, spendLogColumns, &spendLogSource{s: s, n: n})
	s.res.SpendLogs = n
	return err
}

// seedDeployments are the model rows: two per at-rest format. LiteLLM
// encrypts every string in litellm_params when a model is added through
// its API.
var seedDeployments = []struct{ name, model, base string }{
	{"gpt-4o", "openai/gpt-4o", "https://api.openai.example.invalid/v1"},
	{"gpt-4o-mini", "openai/gpt-4o-mini", "https://api.openai.example.invalid/v1"},
	{"claude-3-5-sonnet", "anthropic/claude-3-5-sonnet-20241022", "https://api.anthropic.example.invalid"},
	{"text-embedding-3-small", "openai/text-embedding-3-small", "https://api.openai.example.invalid/v1"},
}

func (s *seeder) models(ctx context.Context) error {
	var rows [][]any
	for fi, f := range litellm.Formats {
		for d := 0; d < 2; d++ {
			dep := seedDeployments[(fi*2+d)%len(seedDeployments)]
			id := newUUID()
			params := map[string]any{}
			for _, kv := range [][2]string{{"model", dep.model}, {"api_key", "sk-upstream-" + randHex(16)}, {"api_base", dep.base}} {
				ct, err := s.encrypt("LiteLLM_ProxyModelTable", id, kv[0], kv[1], f)
				if err != nil {
					return err
				}
				params[kv[0]] = ct
			}
			params["rpm"] = 600 // numbers stay plain
			pj, _ := json.Marshal(params)
			info, _ := json.Marshal(map[string]any{"id": id, "db_model": true})
			rows = append(rows, []any{id, dep.name, pj, info, false, s.now, "default_user_id", s.now, "default_user_id"})
		}
	}
	_, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_ProxyModelTable"},
		[]string{"model_id", "model_name", "litellm_params", "model_info", "blocked", "created_at", "created_by", "updated_at", "updated_by"},
		pgx.CopyFromRows(rows))
	return err
}

func (s *seeder) credentials(ctx context.Context) error {
	var rows [][]any
	for _, f := range litellm.Formats {
		id := newUUID()
		vals := map[string]any{}
		for _, kv := range [][2]string{{"api_key", "sk-cred-" + randHex(16)}, {"api_base", "https://azure.example.invalid/openai"}} {
			ct, err := s.encrypt("LiteLLM_CredentialsTable", id, kv[0], kv[1], f)
			if err != nil {
				return err
			}
			vals[kv[0]] = ct
		}
		vj, _ := json.Marshal(vals)
		info, _ := json.Marshal(map[string]any{"custom_llm_provider": "azure", "description": "seeded " + f.String()})
		rows = append(rows, []any{id, "azure-" + f.String(), vj, info, s.now, "default_user_id", s.now, "default_user_id"})
	}
	_, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_CredentialsTable"},
		[]string{"credential_id", "credential_name", "credential_values", "credential_info", "created_at", "created_by", "updated_at", "updated_by"},
		pgx.CopyFromRows(rows))
	return err
}

func (s *seeder) config(ctx context.Context) error {
	env := map[string]any{}
	for i, name := range []string{"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_API_KEY", "LANGFUSE_SECRET_KEY"} {
		ct, err := s.encrypt("LiteLLM_Config", litellm.ConfigEnvironmentVariables, name, "upstream-"+randHex(16), litellm.Formats[i%len(litellm.Formats)])
		if err != nil {
			return err
		}
		env[name] = ct
	}
	ej, _ := json.Marshal(env)
	gj, _ := json.Marshal(map[string]any{"store_model_in_db": true})
	_, err := s.tx.CopyFrom(ctx, pgx.Identifier{"LiteLLM_Config"}, []string{"param_name", "param_value"},
		pgx.CopyFromRows([][]any{{litellm.ConfigEnvironmentVariables, ej}, {"general_settings", gj}}))
	return err
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// newUUID returns a random (version 4) UUID, as Prisma's uuid() default.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// seedFile is the on-disk form of a SeedResult. It holds raw keys: it is a
// lab-only file, written 0600.
type seedFile struct {
	Now               time.Time       `json:"now"`
	MasterKeyHash     string          `json:"master_key_hash"`
	EncryptedWithSalt bool            `json:"encrypted_with_salt"`
	SpendLogs         int             `json:"spend_logs"`
	MasterKeyIPs      []string        `json:"master_key_ips"`
	Keys              []seedFileKey   `json:"keys"`
	AtRest            []seedFileValue `json:"at_rest"`
}

type seedFileKey struct {
	Key           string    `json:"key"`
	Hash          string    `json:"hash"`
	Alias         string    `json:"alias,omitempty"`
	TeamID        string    `json:"team_id"`
	UserID        string    `json:"user_id,omitempty"`
	Blocked       bool      `json:"blocked,omitempty"`
	Expires       time.Time `json:"expires,omitzero"`
	Expired       bool      `json:"expired,omitempty"`
	JWTMapped     bool      `json:"jwt_mapped,omitempty"`
	CallbackVars  bool      `json:"callback_vars,omitempty"`
	GraceKey      string    `json:"grace_key,omitempty"`
	GraceHash     string    `json:"grace_hash,omitempty"`
	GraceRevokeAt time.Time `json:"grace_revoke_at,omitzero"`
}

type seedFileValue struct {
	Table  string `json:"table"`
	Row    string `json:"row"`
	Field  string `json:"field"`
	Format string `json:"format"`
	Plain  string `json:"plain"`
}

// Save writes the result, raw keys included, to path with mode 0600.
func (r *SeedResult) Save(path string) error {
	f := seedFile{
		Now: r.Now, MasterKeyHash: r.MasterKeyHash, EncryptedWithSalt: r.EncryptedWithSalt,
		SpendLogs: r.SpendLogs, MasterKeyIPs: r.MasterKeyIPs,
	}
	for _, k := range r.Keys {
		f.Keys = append(f.Keys, seedFileKey{
			Key: k.Key.Reveal(), Hash: k.Hash, Alias: k.Alias, TeamID: k.TeamID, UserID: k.UserID,
			Blocked: k.Blocked, Expires: k.Expires, Expired: k.Expired, JWTMapped: k.JWTMapped,
			CallbackVars: k.CallbackVars, GraceKey: k.GraceKey.Reveal(), GraceHash: k.GraceHash,
			GraceRevokeAt: k.GraceRevokeAt,
		})
	}
	for _, v := range r.AtRest {
		f.AtRest = append(f.AtRest, seedFileValue{Table: v.Table, Row: v.Row, Field: v.Field, Format: v.Format.String(), Plain: v.Plain.Reveal()})
	}
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return fmt.Errorf("save seed to %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".seed-*.json")
	if err != nil {
		return fmt.Errorf("save seed to %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("save seed to %s: %w", path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save seed to %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save seed to %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save seed to %s: %w", path, err)
	}
	return nil
}

// LoadSeed reads a file written by SeedResult.Save.
func LoadSeed(path string) (*SeedResult, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load seed: %w", err)
	}
	var f seedFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("load seed from %s: %w", path, err)
	}
	r := &SeedResult{
		Now: f.Now, MasterKeyHash: f.MasterKeyHash, EncryptedWithSalt: f.EncryptedWithSalt,
		SpendLogs: f.SpendLogs, MasterKeyIPs: f.MasterKeyIPs,
	}
	for _, k := range f.Keys {
		sk := SeededKey{
			Key: secret.New(k.Key), Hash: k.Hash, Alias: k.Alias, TeamID: k.TeamID, UserID: k.UserID,
			Blocked: k.Blocked, Expires: k.Expires, Expired: k.Expired, JWTMapped: k.JWTMapped,
			CallbackVars: k.CallbackVars, GraceHash: k.GraceHash, GraceRevokeAt: k.GraceRevokeAt,
		}
		if k.GraceKey != "" {
			sk.GraceKey = secret.New(k.GraceKey)
		}
		r.Keys = append(r.Keys, sk)
	}
	for _, v := range f.AtRest {
		format, err := litellm.ParseFormat(v.Format)
		if err != nil {
			return nil, fmt.Errorf("load seed from %s: %w", path, err)
		}
		r.AtRest = append(r.AtRest, SeededValue{Table: v.Table, Row: v.Row, Field: v.Field, Format: format, Plain: secret.New(v.Plain)})
	}
	return r, nil
}
