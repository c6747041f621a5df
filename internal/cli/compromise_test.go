package cli

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/engine"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

// status asks a gateway for /v1/models with key and returns the HTTP status
// (0 when the gateway does not answer).
func status(t *testing.T, base string, key secret.Value) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/v1/models", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key.Reveal())
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// labRunbookEnv is labEnv with the lab's inventory and the project's
// runbooks directory, for running the shipped runbooks against the lab. It
// overrides the workdir's own RUNBOOK_INVENTORY (the later value wins).
func labRunbookEnv(t *testing.T, lb *lab.Lab) []string {
	t.Helper()
	abs, err := filepath.Abs("../../runbooks")
	if err != nil {
		t.Fatal(err)
	}
	return append(labEnv(lb), "RUNBOOK_INVENTORY="+lb.InventoryPath, "RUNBOOK_RUNBOOKS="+abs)
}

func labEnv(lb *lab.Lab) []string {
	return []string{
		"VAULT_ADDR=" + lb.Vault.Addr,
		"VAULT_TOKEN=" + lb.Vault.RunnerToken.Reveal(),
		"DATABASE_URL=" + lb.DatabaseURL,
	}
}

// TestCompromiseMasterOnTheLab runs the main job the way a responder does,
// against 3 real gateways, Vault and PostgreSQL, after a dry run: the run
// changes what the plan said; afterwards every gateway serves on the new
// master key, the old master and virtual keys are refused, the new virtual
// keys (from Vault) are accepted, containment is lifted, the record's phase
// times meet their targets, and no key value is in any output, journal or
// record.
func TestCompromiseMasterOnTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the lab")
	}
	lb := labtest.Full(t, 3)
	ctx := context.Background()
	w := newWorkdir(t, "", nil)
	env := labRunbookEnv(t, lb)

	before := labSnapshot(t, lb)
	planOut, errOut, code := w.run(env, "exec", "compromise-master", "--dry-run", "-o", "json", "--reason", "test: key in a public repo")
	if code != 0 {
		t.Fatalf("dry run: exit %d\n%s%s", code, planOut, errOut)
	}
	var plan planJSON
	if err := json.Unmarshal([]byte(planOut), &plan); err != nil {
		t.Fatalf("plan JSON: %v\n%s", err, planOut)
	}
	// The dry run wrote nothing: Vault, the database and the gateways'
	// files are as they were, byte for byte, and no run was journaled.
	if after := labSnapshot(t, lb); after != before {
		t.Fatalf("the dry run changed the lab:\nbefore %s\nafter  %s", before, after)
	}
	if _, err := os.Stat(filepath.Join(w.dir, "state")); err == nil {
		if runs := w.runs(); len(runs) != 0 {
			t.Fatalf("the dry run journaled %d run(s)", len(runs))
		}
	}
	for _, g := range lb.Gateways {
		if st := status(t, g.URL(), lb.MasterKey); st != 200 {
			t.Fatalf("the dry run changed %s: master key gets %d", g.Name, st)
		}
	}

	runOut, errOut, code := w.run(env, "exec", "compromise-master", "--yes", "-o", "json", "--reason", "test: key in a public repo")
	if code != 0 {
		t.Fatalf("run: exit %d\n%s%s", code, runOut, errOut)
	}

	// The run changed exactly what the plan predicted (a plan's "change
	// after" resolves to a change once its dependency ran).
	predicted, changed := map[string]bool{}, map[string]bool{}
	for _, it := range plan.Items {
		if it.Status == engine.StatusChange || it.Status == engine.StatusChangeAfter {
			predicted[it.Step+"@"+it.Host] = true
		}
	}
	for _, line := range strings.Split(runOut, "\n") {
		var ev struct {
			Event string       `json:"event"`
			Type  string       `json:"type"`
			Item  *engine.Item `json:"item"`
		}
		if json.Unmarshal([]byte(line), &ev) != nil || ev.Item == nil || ev.Type != string(engine.EventHostDone) {
			continue
		}
		if ev.Item.Status == engine.StatusChanged {
			changed[ev.Item.Step+"@"+ev.Item.Host] = true
		}
	}
	if fmt.Sprint(sortedSet(predicted)) != fmt.Sprint(sortedSet(changed)) {
		t.Errorf("plan predicted %v\nrun changed %v", sortedSet(predicted), sortedSet(changed))
	}

	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := vc.ReadCurrent(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	newMaster := cur.Secret("key")
	if cur.Version != 2 || newMaster.IsZero() || newMaster.Equal(lb.MasterKey) {
		t.Fatalf("Vault's current master key is version %d; want a new version 2", cur.Version)
	}
	for _, g := range lb.Gateways {
		if st := status(t, g.URL(), newMaster); st != 200 {
			t.Errorf("%s: new master key gets %d, want 200 (containment lifted, serving)", g.Name, st)
		}
		if st := status(t, g.URL(), lb.MasterKey); st != 401 {
			t.Errorf("%s: old master key gets %d, want 401", g.Name, st)
		}
	}

	// Every virtual key: the old value is refused, the new one from Vault
	// accepted (unless the key is blocked or expired).
	secrets := []secret.Value{newMaster}
	gw := lb.Gateways[0].URL()
	for _, k := range lb.Seed.Keys {
		if st := status(t, gw, k.Key); st != 401 {
			t.Errorf("old virtual key %s gets %d, want 401", secret.Fingerprint(k.Key.Reveal()), st)
		}
		name := k.Alias
		if name == "" {
			name = k.Hash
		}
		e, err := vc.Read(ctx, "litellm/virtual-keys/"+name)
		if err != nil {
			t.Errorf("no new key in Vault for %s: %v", name, err)
			continue
		}
		nk := e.Secret("key")
		secrets = append(secrets, nk)
		want := 200
		if k.Blocked || k.Expired {
			want = 401
		}
		if st := status(t, gw, nk); st != want {
			t.Errorf("new key for %s gets %d, want %d", name, st, want)
		}
		if litellm.HashToken(nk.Reveal()) == k.Hash {
			t.Errorf("key %s was not replaced", name)
		}
	}

	// The record: succeeded, every phase within its target.
	recs, _ := filepath.Glob(filepath.Join(w.dir, "records", "*-compromise-master-*.json"))
	if len(recs) != 1 {
		t.Fatalf("%d JSON records", len(recs))
	}
	b, err := os.ReadFile(recs[0])
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Status string `json:"status"`
		Phases []struct {
			Name, Met string
		} `json:"phases"`
		FollowUps []string `json:"follow_ups"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Status != "succeeded" || len(rec.Phases) != 3 || len(rec.FollowUps) == 0 {
		t.Fatalf("record: %+v", rec)
	}
	for _, ph := range rec.Phases {
		if ph.Met != "yes" {
			t.Errorf("phase %s met its target: %s", ph.Name, ph.Met)
		}
	}

	// No key value anywhere the run wrote or printed.
	for _, k := range lb.Seed.Keys {
		secrets = append(secrets, k.Key)
	}
	leakScan(t, append(secrets, lb.MasterKey), map[string][]byte{"plan stdout": []byte(planOut), "run stdout": []byte(runOut), "run stderr": []byte(errOut)}, w.dir)
}

// labSnapshot digests what a run could change: Vault's master-key versions,
// every LiteLLM table a kind writes, and each gateway's config and env files.
func labSnapshot(t *testing.T, lb *lab.Lab) string {
	t.Helper()
	ctx := context.Background()
	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	md, err := vc.Metadata(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	h := &strings.Builder{}
	fmt.Fprintf(h, "vault %d %d %v\n", md.CurrentVersion, len(md.Versions), md.CustomMetadata)
	if keys, err := vc.List(ctx, "litellm/virtual-keys"); err == nil {
		fmt.Fprintf(h, "virtual keys in vault %d\n", len(keys))
	}
	conn := connectDB(t, lb.DatabaseURL)
	defer conn.Close(ctx)
	for _, table := range []string{litellm.TableVerificationToken, litellm.TableJWTKeyMapping, litellm.TableDeprecatedVerificationToken,
		litellm.TableDeletedVerificationToken, litellm.TableProxyModel, litellm.TableCredentials, litellm.TableConfig, litellm.TableTeam, litellm.TableUser} {
		var sum string
		if err := conn.QueryRow(ctx, "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), 'empty') FROM "+table+" t").Scan(&sum); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		fmt.Fprintf(h, "%s %s\n", table, sum)
	}
	for _, g := range lb.Gateways {
		for _, p := range []string{g.ConfigPath(), g.EnvPath()} {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(h, "%s %x\n", p, sha256.Sum256(b))
		}
	}
	return h.String()
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// leakScan fails when any secret value appears in the given outputs or in
// any file under dirs (journals, records, state).
func leakScan(t *testing.T, secrets []secret.Value, outputs map[string][]byte, dirs ...string) {
	t.Helper()
	check := func(where string, b []byte) {
		for _, s := range secrets {
			if !s.IsZero() && strings.Contains(string(b), s.Reveal()) {
				t.Errorf("secret %s found in %s", s.Fingerprint(), where)
			}
		}
	}
	for where, b := range outputs {
		check(where, b)
	}
	for _, d := range dirs {
		_ = filepath.Walk(d, func(p string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err == nil {
				check(p, b)
			}
			return nil
		})
	}
}
