package litellm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	ll "github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/vault"
)

// keyState is everything about a key row that re-issuing must keep.
type keyState struct {
	Alias, Team, User, Models, Metadata, Expires, Created, CreatedBy string
	Spend                                                            float64
	MaxBudget                                                        *float64
	Blocked                                                          *bool
	Rotations                                                        int
	Token, KeyName, UpdatedBy                                        string
	LastRotation                                                     *time.Time
}

func (w *world) keyStates() map[string]keyState {
	w.t.Helper()
	rows, err := w.pool.Query(context.Background(), `SELECT token, COALESCE(key_alias,''), COALESCE(team_id,''),
        COALESCE(user_id,''), COALESCE(models::text,''), metadata::text, COALESCE(expires::text,''),
        COALESCE(created_at::text,''), COALESCE(created_by,''), spend, max_budget, blocked,
        COALESCE(rotation_count,0), COALESCE(key_name,''), COALESCE(updated_by,''), last_rotation_at
        FROM "LiteLLM_VerificationToken"`)
	if err != nil {
		w.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]keyState{}
	for rows.Next() {
		var k keyState
		if err := rows.Scan(&k.Token, &k.Alias, &k.Team, &k.User, &k.Models, &k.Metadata, &k.Expires, &k.Created,
			&k.CreatedBy, &k.Spend, &k.MaxBudget, &k.Blocked, &k.Rotations, &k.KeyName, &k.UpdatedBy, &k.LastRotation); err != nil {
			w.t.Fatal(err)
		}
		out[k.Token] = k
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	return out
}

// preserved is the part of keyState that must not change.
func (k keyState) preserved() keyState {
	return keyState{Alias: k.Alias, Team: k.Team, User: k.User, Models: k.Models, Metadata: k.Metadata,
		Expires: k.Expires, Created: k.Created, CreatedBy: k.CreatedBy, Spend: k.Spend, MaxBudget: k.MaxBudget, Blocked: k.Blocked}
}

// vaultKeyFor reads the key stored for a key row.
func (w *world) vaultKeyFor(prefix string, row ll.KeyRow) *vault.Entry {
	w.t.Helper()
	e, err := w.vc.Read(context.Background(), VaultPath(prefix, row), vaultPlainFields...)
	if err != nil {
		w.t.Fatalf("vault record for %s: %v", secret.Fingerprint(row.Token), err)
	}
	return e
}

// checkReissued verifies the invariants after a re-issue of every key in
// before by runID: each row's token is the hash of the key Vault holds for
// it, the Vault record names the old hash and the run, what must be kept
// is kept, and no grace row keeps an old hash valid.
func (w *world) checkReissued(before map[string]keyState, rows []ll.KeyRow, runID, prefix string) map[string]secret.Value {
	w.t.Helper()
	after := w.keyStates()
	if len(after) != len(before) {
		w.t.Fatalf("%d key rows after, %d before", len(after), len(before))
	}
	newKeys := map[string]secret.Value{}
	for _, row := range rows {
		e := w.vaultKeyFor(prefix, row)
		key := e.Secret(VaultKeyField)
		h := ll.HashToken(key.Reveal())
		if e.Plain["old_token_hash"] != row.Token || e.Plain["run_id"] != runID || e.Plain["token_hash"] != h {
			w.t.Fatalf("vault record for %s: old %s run %s token %s", secret.Fingerprint(row.Token),
				secret.Fingerprint(e.Plain["old_token_hash"]), e.Plain["run_id"], secret.Fingerprint(e.Plain["token_hash"]))
		}
		got, ok := after[h]
		if !ok {
			w.t.Fatalf("no row has the hash of the key in vault for %s", secret.Fingerprint(row.Token))
		}
		old := before[row.Token]
		if !reflect.DeepEqual(got.preserved(), old.preserved()) {
			w.t.Errorf("key %s changed:\n before %+v\n after  %+v", secret.Fingerprint(row.Token), old.preserved(), got.preserved())
		}
		if got.Rotations != old.Rotations+1 || got.UpdatedBy != RunMarker(runID) || got.LastRotation == nil ||
			got.KeyName != ll.KeyName(key.Reveal()) {
			w.t.Errorf("key %s: rotations %d (was %d), updated_by %q, last_rotation %v, key_name ok %v",
				secret.Fingerprint(row.Token), got.Rotations, old.Rotations, got.UpdatedBy, got.LastRotation, got.KeyName == ll.KeyName(key.Reveal()))
		}
		if _, still := after[row.Token]; still {
			w.t.Errorf("old hash %s is still a key", secret.Fingerprint(row.Token))
		}
		newKeys[row.Token] = key
	}
	olds := make([]string, 0, len(rows))
	for _, r := range rows {
		olds = append(olds, r.Token)
	}
	if n := w.count(`SELECT count(*) FROM "LiteLLM_DeprecatedVerificationToken" WHERE token = ANY($1) OR active_token_id = ANY($1)`, olds); n != 0 {
		w.t.Errorf("%d grace rows name an old hash", n)
	}
	if n := w.count(`SELECT count(*) FROM "LiteLLM_DeletedVerificationToken" WHERE token = ANY($1) AND deleted_by = $2`, olds, RunMarker(runID)); n != len(rows) {
		w.t.Errorf("%d audit rows for %d re-issued keys", n, len(rows))
	}
	return newKeys
}

func allRows(t testing.TB, w *world) []ll.KeyRow {
	t.Helper()
	rows, err := ll.SelectKeys(context.Background(), w.pool, ll.KeySelection{})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func TestReissueAll(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 60}})
	ctx := context.Background()
	const runID = "run-reissue-all"
	rows := allRows(t, w)
	before := w.keyStates()
	jwtBefore := w.count(`SELECT count(*) FROM "LiteLLM_JWTKeyMapping"`)
	withGrace := 0
	for _, k := range w.seed.Keys {
		if !k.GraceKey.IsZero() {
			withGrace++
		}
	}
	if withGrace == 0 || jwtBefore == 0 {
		t.Fatalf("seed has %d keys with grace rows and %d jwt mappings; the test needs both", withGrace, jwtBefore)
	}

	s := newStep(t, ReissueSpec, map[string]any{"all": true})
	env := w.env(runID)
	obs, err := s.Check(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("re-issue %d virtual keys (%d with grace rows)", len(rows), withGrace); obs.Change != want {
		t.Errorf("change %q, want %q", obs.Change, want)
	}
	out, err := s.Apply(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	if out["count"] != strconv.Itoa(len(rows)) || out["with_grace"] != strconv.Itoa(withGrace) {
		t.Errorf("outputs %v", out)
	}
	newKeys := w.checkReissued(before, rows, runID, "litellm/virtual-keys")
	if n := w.count(`SELECT count(*) FROM "LiteLLM_DeprecatedVerificationToken"`); n != 0 {
		t.Errorf("%d grace rows left", n)
	}
	// JWT mappings follow the new hashes.
	if n := w.count(`SELECT count(*) FROM "LiteLLM_JWTKeyMapping" m JOIN "LiteLLM_VerificationToken" v ON v.token = m.token`); n != jwtBefore {
		t.Errorf("%d jwt mappings point at a key, want %d", n, jwtBefore)
	}
	// Keys without an alias are stored by old hash; with one, by alias.
	for _, r := range rows {
		want := "litellm/virtual-keys/" + r.Alias
		if r.Alias == "" {
			want = "litellm/virtual-keys/" + r.Token
		}
		if got := VaultPath("litellm/virtual-keys", r); got != want {
			t.Errorf("vault path %s, want %s", got, want)
		}
	}

	// Done: Check is ok and gives the count.
	obs, err = s.Check(ctx, env)
	if err != nil || !obs.OK() || obs.Outputs["count"] != strconv.Itoa(len(rows)) {
		t.Errorf("check after apply: %+v, %v", obs, err)
	}

	// The note lists owners, and no key value is anywhere.
	notes := w.deps.Notes()
	if len(notes) != 1 || notes[0].Note.Kind != "reissued_virtual_keys" || notes[0].Step != "step-under-test" {
		t.Fatalf("notes %+v", notes)
	}
	n := notes[0].Note
	for _, team := range []string{"team-00", "team-04"} {
		if !strings.Contains(n.Fields["teams"], team) || !strings.Contains(n.Text, team) {
			t.Errorf("note does not name %s: %v", team, n.Fields["teams"])
		}
	}
	for _, r := range rows {
		if r.Alias != "" && !strings.Contains(n.Text, r.Alias) {
			t.Errorf("note does not list alias %s", r.Alias)
		}
	}
	var all []secret.Value
	for _, k := range newKeys {
		all = append(all, k)
	}
	for _, k := range w.seed.Keys {
		all = append(all, k.Key, k.GraceKey)
	}
	nj, _ := json.Marshal(n)
	oj, _ := json.Marshal(out)
	assertNoSecrets(t, "note", string(nj), all...)
	assertNoSecrets(t, "outputs", string(oj), all...)
	assertNoSecrets(t, "log", w.logs.String(), all...)
	assertNoSecrets(t, "change", obs.Change, all...)
	// The masker knows every new key.
	for _, k := range newKeys {
		if w.masker.MaskString("x"+k.Reveal()+"x") != "x"+secret.Redacted+"x" {
			t.Fatal("a new key is not masked")
		}
	}
}

func TestReissueRefusesWhileGatewayActive(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 10}})
	ctx := context.Background()
	w.gw.setState(t, "gw2", "litellm", "active")
	before := w.dumpAll()
	s := newStep(t, ReissueSpec, map[string]any{"all": true})
	env := w.env("run-active")
	_, err := s.Check(ctx, env)
	var ae *ActiveGatewaysError
	if !errors.As(err, &ae) || !reflect.DeepEqual(ae.Hosts, []string{"gw2"}) {
		t.Fatalf("check: %v, want the active gateway gw2 named", err)
	}
	if _, err := s.Apply(ctx, env); !errors.As(err, &ae) {
		t.Fatalf("apply: %v", err)
	}
	// "activating" counts as running; an unreadable answer is an error.
	w.gw.setState(t, "gw2", "litellm", "activating")
	if _, err := s.Check(ctx, env); !errors.As(err, &ae) {
		t.Errorf("activating: %v", err)
	}
	w.gw.setState(t, "gw2", "litellm", "garbled")
	if _, err := s.Check(ctx, env); err == nil || errors.As(err, &ae) {
		t.Errorf("garbled state: %v", err)
	}
	if after := w.dumpAll(); !reflect.DeepEqual(before, after) {
		t.Error("refused step changed the database")
	}
	if st := w.vaultState("litellm/virtual-keys"); len(st) != 0 {
		t.Errorf("refused step wrote to vault: %v", st)
	}
	w.gw.setState(t, "gw2", "litellm", "failed")
	if obs, err := s.Check(ctx, env); err != nil || obs.OK() {
		t.Errorf("failed unit: %+v %v", obs, err)
	}
}

func TestReissueSelection(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 40}})
	ctx := context.Background()
	all := allRows(t, w)
	pick := func(f func(ll.KeyRow) bool) []ll.KeyRow {
		var out []ll.KeyRow
		for _, r := range all {
			if f(r) {
				out = append(out, r)
			}
		}
		return out
	}
	var aliases []string
	for _, r := range all {
		if r.Alias != "" && len(aliases) < 3 {
			aliases = append(aliases, r.Alias)
		}
	}
	cases := []struct {
		name string
		with map[string]any
		want func(ll.KeyRow) bool
	}{
		{"team", map[string]any{"teams": []string{"team-01"}}, func(r ll.KeyRow) bool { return r.TeamID == "team-01" }},
		{"aliases", map[string]any{"aliases": aliases}, func(r ll.KeyRow) bool { return contains(aliases, r.Alias) }},
	}
	for i, c := range cases {
		before := w.keyStates()
		want := pick(c.want)
		runID := fmt.Sprintf("run-sel-%d", i)
		s := newStep(t, ReissueSpec, c.with)
		obs, err := s.Check(ctx, w.env(runID))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(obs.Change, fmt.Sprintf("re-issue %d virtual keys", len(want))) {
			t.Errorf("%s: change %q, want %d keys", c.name, obs.Change, len(want))
		}
		if _, err := s.Apply(ctx, w.env(runID)); err != nil {
			t.Fatal(err)
		}
		after := w.keyStates()
		changed := 0
		for tok := range before {
			if _, ok := after[tok]; !ok {
				changed++
			}
		}
		if changed != len(want) {
			t.Errorf("%s: %d keys changed, want %d", c.name, changed, len(want))
		}
		w.checkReissued(before, want, runID, "litellm/virtual-keys")
		all = allRows(t, w)
	}

	// Age: every key was just rotated or is older than a day; older_than
	// 1h takes exactly those not rotated in the last hour.
	var old int
	if err := w.pool.QueryRow(ctx, `SELECT count(*) FROM "LiteLLM_VerificationToken"
        WHERE COALESCE(last_rotation_at, created_at) < (now() AT TIME ZONE 'utc') - interval '2 hours'`).Scan(&old); err != nil {
		t.Fatal(err)
	}
	s := newStep(t, ReissueSpec, map[string]any{"older_than": 2 * time.Hour})
	obs, err := s.Check(ctx, w.env("run-age"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(obs.Change, fmt.Sprintf("re-issue %d virtual keys", old)) || old == 0 || old == len(all) {
		t.Errorf("age: change %q, want %d of %d keys", obs.Change, old, len(all))
	}

	// Selection parameters are checked.
	for _, with := range []map[string]any{{}, {"all": true, "teams": []string{"x"}}} {
		p := step.Params{}
		for k, v := range with {
			p[k] = v
		}
		if _, err := ReissueSpec.New(p); err == nil {
			t.Errorf("params %v accepted", with)
		}
	}
}

func TestReissueGrace(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 30}})
	ctx := context.Background()
	rows := allRows(t, w)
	s := newStep(t, ReissueSpec, map[string]any{"all": true, "grace": time.Hour})
	start := time.Now().UTC()
	if _, err := s.Apply(ctx, w.env("run-grace")); err != nil {
		t.Fatal(err)
	}
	olds := make([]string, len(rows))
	for i, r := range rows {
		olds[i] = r.Token
	}
	// One grace row per old hash, pointing at the new one, for an hour.
	if n := w.count(`SELECT count(*) FROM "LiteLLM_DeprecatedVerificationToken" d
        JOIN "LiteLLM_VerificationToken" v ON v.token = d.active_token_id
        WHERE d.token = ANY($1) AND d.revoke_at BETWEEN $2 AND $3`, olds,
		start.Add(59*time.Minute), start.Add(61*time.Minute)); n != len(rows) {
		t.Errorf("%d grace rows for %d keys", n, len(rows))
	}
	if n := w.count(`SELECT count(*) FROM "LiteLLM_DeprecatedVerificationToken"`); n != len(rows) {
		t.Errorf("%d grace rows in all; the earlier ones should be gone", n)
	}
}

// TestReissueResumeAfterCrash stops Apply between the Vault writes and the
// database commit, and in the middle of the Vault writes, then runs it
// again: the keys written by the first attempt are reused, none is issued
// twice, and the invariants hold.
func TestReissueResumeAfterCrash(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 40}})
	ctx := context.Background()
	prefix := "litellm/virtual-keys"
	rows := allRows(t, w)
	before := w.keyStates()
	dbBefore := w.dumpAll()

	// Crash 1: in the middle of the Vault writes.
	const runID = "run-crash"
	s := newStep(t, ReissueSpec, map[string]any{"all": true, "vault_parallel": 4}).(*Reissue)
	crash := errors.New("simulated crash")
	cctx, cancel := context.WithCancel(ctx)
	s.afterVaultWrite = func(_ context.Context, n int) error {
		if n == 15 {
			cancel()
			return crash
		}
		return nil
	}
	if _, err := s.Apply(cctx, w.env(runID)); !errors.Is(err, crash) {
		t.Fatalf("first attempt: %v", err)
	}
	if !reflect.DeepEqual(w.dumpAll(), dbBefore) {
		t.Fatal("a crash before the commit changed the database")
	}
	v1 := w.vaultState(prefix)
	if len(v1) < 15 || len(v1) >= len(rows) {
		t.Fatalf("%d vault records after the first attempt", len(v1))
	}

	// Crash 2: after every Vault write, before the commit.
	s2 := newStep(t, ReissueSpec, map[string]any{"all": true}).(*Reissue)
	s2.beforeCommit = func(context.Context) error { return crash }
	if _, err := s2.Apply(ctx, w.env(runID)); !errors.Is(err, crash) {
		t.Fatalf("second attempt: %v", err)
	}
	if !reflect.DeepEqual(w.dumpAll(), dbBefore) {
		t.Fatal("a crash before the commit changed the database")
	}
	v2 := w.vaultState(prefix)
	if len(v2) != len(rows) {
		t.Fatalf("%d vault records, want %d", len(v2), len(rows))
	}
	for p, ver := range v1 {
		if v2[p] != ver {
			t.Errorf("%s: version %d after resume, was %d: a second key was issued", p, v2[p], ver)
		}
	}

	// Resume: nothing new in Vault, every key committed.
	s3 := newStep(t, ReissueSpec, map[string]any{"all": true})
	obs, err := s3.Check(ctx, w.env(runID))
	if err != nil || obs.OK() {
		t.Fatalf("check before resume: %+v %v", obs, err)
	}
	if _, err := s3.Apply(ctx, w.env(runID)); err != nil {
		t.Fatal(err)
	}
	if v3 := w.vaultState(prefix); !reflect.DeepEqual(v3, v2) {
		t.Error("resume wrote to vault again")
	}
	if !strings.Contains(w.logs.String(), "reusing keys stored in vault") {
		t.Error("resume did not say it reused keys")
	}
	w.checkReissued(before, rows, runID, prefix)

	// A later run re-issues again and gets new values.
	s4 := newStep(t, ReissueSpec, map[string]any{"all": true})
	before = w.keyStates()
	rows = allRows(t, w)
	if _, err := s4.Apply(ctx, w.env("run-later")); err != nil {
		t.Fatal(err)
	}
	w.checkReissued(before, rows, "run-later", prefix)
}

// The child half of TestReissueKilled: it runs Apply and SIGKILLs itself
// at the hook named by RUNBOOK_TEST_KILL_AT.
func TestReissueKilledChild(t *testing.T) {
	at := os.Getenv("RUNBOOK_TEST_KILL_AT")
	if at == "" {
		t.Skip("run by TestReissueKilled")
	}
	ctx := context.Background()
	w := &world{t: t}
	var err error
	w.pool, err = pgxpoolNew(ctx, os.Getenv("RUNBOOK_TEST_DB"))
	if err != nil {
		t.Fatal(err)
	}
	w.vc, err = vault.New(ctx, vault.Config{Address: os.Getenv("RUNBOOK_TEST_VAULT"), Token: secret.New(os.Getenv("RUNBOOK_TEST_VAULT_TOKEN"))})
	if err != nil {
		t.Fatal(err)
	}
	w.gw = &gatewaySet{dir: os.Getenv("RUNBOOK_TEST_GW")}
	w.gw.hosts = newGatewaySetFrom(w.gw.dir)
	w.deps = &testDeps{pool: w.pool, vc: w.vc, gw: w.gw}
	w.masker = &secret.Masker{}
	w.logs = &bytes.Buffer{}
	s := newStep(t, ReissueSpec, map[string]any{"all": true, "vault_parallel": 4}).(*Reissue)
	kill := func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	switch {
	case strings.HasPrefix(at, "vault:"):
		n, _ := strconv.Atoi(strings.TrimPrefix(at, "vault:"))
		s.afterVaultWrite = func(_ context.Context, i int) error {
			if i == n {
				kill()
			}
			return nil
		}
	case at == "commit":
		s.beforeCommit = func(context.Context) error { kill(); return nil }
	}
	_, err = s.Apply(ctx, w.env(os.Getenv("RUNBOOK_TEST_RUN")))
	t.Fatalf("apply returned (%v) instead of being killed", err)
}

// TestReissueKilled kills a process running Apply with SIGKILL, in the
// middle of the Vault writes and then just before the commit (with the
// transaction's statements sent), and resumes in this process.
func TestReissueKilled(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 50}})
	ctx := context.Background()
	rows := allRows(t, w)
	before := w.keyStates()
	dbBefore := w.dumpAll()
	const runID = "run-killed"
	for _, at := range []string{"vault:20", "commit"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReissueKilledChild$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			"RUNBOOK_TEST_KILL_AT="+at, "RUNBOOK_TEST_DB="+w.dbURL, "RUNBOOK_TEST_VAULT="+w.vault.Addr,
			"RUNBOOK_TEST_VAULT_TOKEN="+w.vault.RunnerToken.Reveal(), "RUNBOOK_TEST_GW="+w.gw.dir, "RUNBOOK_TEST_RUN="+runID)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("child at %s: %v\n%s", at, err, out)
		}
		// The killed transaction is rolled back once its connection is
		// gone; wait for the server to see it.
		deadline := time.Now().Add(10 * time.Second)
		for w.count(`SELECT count(*) FROM pg_stat_activity WHERE datname = 'litellm' AND pid <> pg_backend_pid() AND state <> 'idle'`) > 0 {
			if time.Now().After(deadline) {
				t.Fatal("the killed transaction is still open")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !reflect.DeepEqual(w.dumpAll(), dbBefore) {
			t.Fatalf("killed at %s: the database changed", at)
		}
	}
	v := w.vaultState("litellm/virtual-keys")
	if len(v) != len(rows) {
		t.Fatalf("%d vault records, want %d", len(v), len(rows))
	}
	s := newStep(t, ReissueSpec, map[string]any{"all": true})
	if _, err := s.Apply(ctx, w.env(runID)); err != nil {
		t.Fatal(err)
	}
	if got := w.vaultState("litellm/virtual-keys"); !reflect.DeepEqual(got, v) {
		t.Error("resume wrote new keys to vault")
	}
	for p, ver := range v {
		if ver != 1 {
			t.Errorf("%s has %d versions: a key was issued twice", p, ver)
		}
	}
	w.checkReissued(before, rows, runID, "litellm/virtual-keys")
}

func TestTokenFingerprint(t *testing.T) {
	k, _ := ll.NewVirtualKey()
	if got := TokenFingerprint(ll.HashToken(k.Reveal())); got != k.Fingerprint() {
		t.Errorf("fingerprint from the hash %s, of the key %s", got, k.Fingerprint())
	}
}

// TestReissueOddAliases: an alias that is not a plain path segment, or that
// two keys share, stores the key under its old hash instead.
func TestReissueOddAliases(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 10}})
	ctx := context.Background()
	rows := allRows(t, w)
	set := func(tok, alias string) {
		if _, err := w.pool.Exec(ctx, `UPDATE "LiteLLM_VerificationToken" SET key_alias = $2 WHERE token = $1`, tok, alias); err != nil {
			t.Fatal(err)
		}
	}
	set(rows[0].Token, "ops+bot@example.com")
	set(rows[1].Token, "team a/../x")
	set(rows[2].Token, "shared")
	set(rows[3].Token, "shared")
	rows = allRows(t, w)
	want := map[string]string{}
	for _, r := range rows {
		switch r.Alias {
		case "ops+bot@example.com":
			want[r.Token] = "litellm/virtual-keys/ops+bot@example.com"
		case "team a/../x", "shared":
			want[r.Token] = "litellm/virtual-keys/" + r.Token
		}
	}
	before := w.keyStates()
	if _, err := newStep(t, ReissueSpec, map[string]any{"all": true}).Apply(ctx, w.env("run-odd")); err != nil {
		t.Fatal(err)
	}
	for tok, p := range want {
		e, err := w.vc.Read(ctx, p, vaultPlainFields...)
		if err != nil || e.Plain["old_token_hash"] != tok {
			t.Errorf("%s: %v", p, err)
		}
	}
	w.checkReissued(before, rows, "run-odd", "litellm/virtual-keys")
}

// journalDeps are testDeps with what a run's journal says of earlier
// attempts: acted, an intent of the step was journaled before this one.
type journalDeps struct {
	*testDeps
	acted bool
	vc    *vault.Client // when set, instead of testDeps'
}

func (d *journalDeps) Vault(ctx context.Context) (*vault.Client, error) {
	if d.vc != nil {
		return d.vc, nil
	}
	return d.testDeps.Vault(ctx)
}

// countingVault is a Vault client whose requests pass through a proxy on
// loopback that counts the reads and writes of KV data (GET and PUT or
// POST on /v1/secret/data/).
func countingVault(t *testing.T, w *world) (*vault.Client, func() (reads, writes int64)) {
	t.Helper()
	target, err := url.Parse(w.vault.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var reads, writes atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/secret/data/") {
			switch r.Method {
			case http.MethodGet:
				reads.Add(1)
			case http.MethodPut, http.MethodPost:
				writes.Add(1)
			}
		}
		proxy.ServeHTTP(rw, r)
	}))
	t.Cleanup(srv.Close)
	vc, err := vault.New(context.Background(), vault.Config{Address: srv.URL, Token: w.vault.RunnerToken})
	if err != nil {
		t.Fatal(err)
	}
	return vc, func() (int64, int64) { return reads.Swap(0), writes.Swap(0) }
}

func (d *journalDeps) Noted(string, string) bool { return false }
func (d *journalDeps) Acted(string, string) bool { return d.acted }

// TestReissueFirstAttempt: a run's first attempt writes a listed Vault path
// over its current version without reading it first, and still stores every
// key once; a path that requires check-and-set is read and written with it;
// an attempt after one that journaled an intent reads first and reuses the
// keys the earlier attempt stored.
func TestReissueFirstAttempt(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 30}})
	ctx := context.Background()
	const prefix = "litellm/test-first-attempt"
	with := map[string]any{"all": true, "vault_prefix": prefix, "vault_parallel": 4}
	vc, requests := countingVault(t, w)
	env := func(runID string, acted bool) *step.Env {
		e := w.env(runID)
		e.Deps = &journalDeps{testDeps: w.deps, acted: acted, vc: vc}
		return e
	}
	// versions checks each row's path has one version more than in was.
	versions := func(run string, rows []ll.KeyRow, was, now map[string]int) {
		t.Helper()
		for _, r := range rows {
			p := VaultPath(prefix, r)
			if now[p] != was[p]+1 {
				t.Errorf("%s: %s has version %d, want %d", run, p, now[p], was[p]+1)
			}
		}
	}

	// Run one: every path is new.
	before, rows := w.keyStates(), allRows(t, w)
	if _, err := newStep(t, ReissueSpec, with).Apply(ctx, env("run-one", false)); err != nil {
		t.Fatal(err)
	}
	w.checkReissued(before, rows, "run-one", prefix)
	v1 := w.vaultState(prefix)
	versions("run one", rows, map[string]int{}, v1)
	if r, wr := requests(); r != 0 || wr != int64(len(rows)) {
		t.Errorf("run one: %d reads and %d writes of %d new paths, want none and one each", r, wr, len(rows))
	}

	// Run two writes over every path that has an alias (the others are
	// named by their old hash, which changed); five of them require
	// check-and-set from now on.
	before, rows = w.keyStates(), allRows(t, w)
	root, err := w.vault.Client(w.vault.RootToken)
	if err != nil {
		t.Fatal(err)
	}
	listed, casRequired := 0, 0
	for _, r := range rows {
		p := VaultPath(prefix, r)
		if v1[p] == 0 {
			continue
		}
		listed++
		if casRequired < 5 {
			if _, err := root.Logical().WriteWithContext(ctx, "secret/metadata/"+p, map[string]any{"cas_required": true}); err != nil {
				t.Fatal(err)
			}
			casRequired++
		}
	}
	if casRequired < 5 || listed < 10 {
		t.Fatalf("%d of %d keys have a path run one wrote, want at least 10", listed, len(rows))
	}
	if _, err := newStep(t, ReissueSpec, with).Apply(ctx, env("run-two", false)); err != nil {
		t.Fatal(err)
	}
	w.checkReissued(before, rows, "run-two", prefix)
	v2 := w.vaultState(prefix)
	versions("run two", rows, v1, v2)
	// One write per key; the paths that require check-and-set cost a
	// refused write, a read and a write more.
	if r, wr := requests(); r != int64(casRequired) || wr != int64(len(rows)+casRequired) {
		t.Errorf("run two: %d reads and %d writes, want %d and %d", r, wr, casRequired, len(rows)+casRequired)
	}

	// Run three stops after 10 keys are stored, as a crash would; its
	// resume, with the intent journaled, reuses them.
	before, rows = w.keyStates(), allRows(t, w)
	dbBefore := w.dumpAll()
	s := newStep(t, ReissueSpec, with).(*Reissue)
	crash := errors.New("simulated crash")
	s.afterVaultWrite = func(_ context.Context, n int) error {
		if n == 10 {
			return crash
		}
		return nil
	}
	if _, err := s.Apply(ctx, env("run-three", false)); !errors.Is(err, crash) {
		t.Fatalf("first attempt of run three: %v", err)
	}
	if !reflect.DeepEqual(w.dumpAll(), dbBefore) {
		t.Fatal("a crash before the commit changed the database")
	}
	v3a := w.vaultState(prefix)
	stored := 0
	for _, r := range rows {
		if p := VaultPath(prefix, r); v3a[p] > v2[p] {
			stored++
		}
	}
	if stored < 10 || stored == len(rows) {
		t.Fatalf("%d keys stored by the first attempt, want 10 up to fewer than %d", stored, len(rows))
	}
	w.logs.Reset()
	requests()
	if _, err := newStep(t, ReissueSpec, with).Apply(ctx, env("run-three", true)); err != nil {
		t.Fatal(err)
	}
	v3 := w.vaultState(prefix)
	versions("run three", rows, v2, v3)
	// The resume reads every path it lists before it writes.
	if r, _ := requests(); r < int64(stored) {
		t.Errorf("the resume read %d paths, fewer than the %d the first attempt stored", r, stored)
	}
	if !strings.Contains(w.logs.String(), "reusing keys stored in vault") {
		t.Error("the resume did not say it reused keys")
	}
	w.checkReissued(before, rows, "run-three", prefix)
}
