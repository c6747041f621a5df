package litellm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	ll "github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

const masterPath = "litellm/master"

// putMasterKeys stores keys as the next versions of masterPath and returns
// the versions.
func (w *world) putMasterKeys(keys ...secret.Value) []int {
	w.t.Helper()
	ctx := context.Background()
	cur := 0
	md, err := w.vc.Metadata(ctx, masterPath)
	switch {
	case err == nil:
		cur = md.CurrentVersion
	case !errors.Is(err, vault.ErrNotFound):
		w.t.Fatal(err)
	}
	var vs []int
	for _, k := range keys {
		v, err := w.vc.Write(ctx, masterPath, vault.Data{
			Secrets: map[string]secret.Value{"key": k},
			Plain:   map[string]string{"run_id": "setup", "state": "current"},
		}, cur)
		if err != nil {
			w.t.Fatal(err)
		}
		vs = append(vs, v)
		cur = v
	}
	return vs
}

// writeEnvFiles writes each gateway's environment file, with or without
// the salt key, and returns its path (the same on every gateway here).
func (w *world) writeEnvFile(salt bool) string {
	w.t.Helper()
	p := filepath.Join(w.gw.dir, "litellm.env")
	var b strings.Builder
	b.WriteString("# litellm\nLITELLM_MASTER_KEY=" + w.master.Reveal() + "\nDATABASE_URL=" + w.dbURL + "\n")
	if salt {
		b.WriteString("LITELLM_SALT_KEY=salt-do-not-print-0123456789\n")
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return p
}

// gatewayReadiness starts the lab's gateway with the given master key on the
// test database and returns its /health/readiness answer.
func (w *world) gatewayReadiness(master secret.Value) map[string]any {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := lab.GatewayBinary(ctx)
	if err != nil {
		labtest.Missing(w.t, "build the lab gateway: "+err.Error())
	}
	port, err := lab.FreePort()
	if err != nil {
		w.t.Fatal(err)
	}
	cmd := exec.Command(bin, "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--shutdown-delay", "0s")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LITELLM_MASTER_KEY=" + master.Reveal(), "DATABASE_URL=" + w.dbURL, "DISABLE_SCHEMA_UPDATE=true"}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/health/readiness", port)
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := http.Get(url)
		if err == nil {
			var body map[string]any
			derr := json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if derr != nil {
				w.t.Fatal(derr)
			}
			return body
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("gateway did not answer: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestReencryptWithoutSaltKey(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 30}})
	ctx := context.Background()
	newMaster, _ := ll.NewMasterKey()
	vs := w.putMasterKeys(w.master, newMaster)
	envFile := w.writeEnvFile(false)
	with := map[string]any{"env_file": envFile, "master_key_path": masterPath, "old_version": vs[0], "new_version": vs[1]}

	// Before: the gateway with the new key cannot read the stored values.
	if body := w.gatewayReadiness(newMaster); body["undecryptable_rows"].(float64) == 0 {
		t.Fatalf("gateway with the new key reads every row before re-encryption: %v", body)
	}

	s := newStep(t, ReencryptSpec, with)
	env := w.env("run-reencrypt")
	obs, err := s.Check(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("re-encrypt %d values at rest from master key version %d to %d", len(w.seed.AtRest), vs[0], vs[1])
	if !strings.HasPrefix(obs.Change, want) {
		t.Errorf("change %q, want %q...", obs.Change, want)
	}
	out, err := s.Apply(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	if out["salt_key"] != "unset" || out["rewritten"] != fmt.Sprint(len(w.seed.AtRest)) {
		t.Errorf("outputs %v", out)
	}
	// The gateway started with the new master key reads every row; with the
	// old one it no longer does.
	if body := w.gatewayReadiness(newMaster); body["undecryptable_rows"].(float64) != 0 || body["db"] != "connected" {
		t.Errorf("gateway with the new key: %v", body)
	}
	if body := w.gatewayReadiness(w.master); body["undecryptable_rows"].(float64) == 0 {
		t.Errorf("gateway with the old key still reads every row: %v", body)
	}
	// Every value, callback_vars included, opens with the new key in its
	// own format.
	scan, err := ll.ScanAtRest(ctx, w.pool, ll.ReencryptKeys{Old: w.master, New: newMaster})
	if err != nil {
		t.Fatal(err)
	}
	if scan.Count(ll.StateNew) != len(w.seed.AtRest) {
		t.Errorf("%d of %d values under the new key", scan.Count(ll.StateNew), len(w.seed.AtRest))
	}
	byTable := scan.ByTable(ll.StateNew)
	for _, tbl := range []string{"LiteLLM_ProxyModelTable", "LiteLLM_CredentialsTable", "LiteLLM_Config", "LiteLLM_VerificationToken", "LiteLLM_TeamTable", "LiteLLM_UserTable"} {
		if byTable[tbl] == 0 {
			t.Errorf("no value re-encrypted in %s", tbl)
		}
	}

	// Idempotent.
	obs, err = s.Check(ctx, env)
	if err != nil || !obs.OK() {
		t.Errorf("check after apply: %+v %v", obs, err)
	}

	// The record says upstream keys were exposed.
	var followUp bool
	for _, n := range w.deps.Notes() {
		if n.Note.Kind == "follow_up" && strings.Contains(n.Note.Text, "upstream") && strings.Contains(n.Note.Text, SaltKeyVar) {
			followUp = true
		}
		nj, _ := json.Marshal(n)
		var plains []secret.Value
		for _, v := range w.seed.AtRest {
			plains = append(plains, v.Plain)
		}
		assertNoSecrets(t, "note", string(nj), append(plains, w.master, newMaster)...)
	}
	if !followUp {
		t.Errorf("no follow-up note about exposed upstream keys: %+v", w.deps.Notes())
	}
	assertNoSecrets(t, "log", w.logs.String(), w.master, newMaster)
}

func TestReencryptWithSaltKeyChangesNothing(t *testing.T) {
	salt := secret.New("salt-do-not-print-0123456789")
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 10, SaltKey: salt}})
	ctx := context.Background()
	newMaster, _ := ll.NewMasterKey()
	vs := w.putMasterKeys(w.master, newMaster)
	envFile := w.writeEnvFile(true)
	before := w.dumpAll()
	s := newStep(t, ReencryptSpec, map[string]any{"env_file": envFile, "master_key_path": masterPath, "old_version": vs[0], "new_version": vs[1]})
	env := w.env("run-salt")
	obs, err := s.Check(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	if !obs.OK() || obs.Outputs["salt_key"] != "set" || !strings.Contains(obs.Outputs["reason"], SaltKeyVar) {
		t.Errorf("check: %+v", obs)
	}
	if _, err := s.Apply(ctx, env); err != nil {
		t.Fatal(err)
	}
	if after := w.dumpAll(); !reflect.DeepEqual(before, after) {
		t.Error("rows changed with the salt key set")
	}
	assertNoSecrets(t, "log", w.logs.String(), salt)

	// A missing file is an error too, not "no salt key".
	s2 := newStep(t, ReencryptSpec, map[string]any{"env_file": filepath.Join(w.gw.dir, "missing.env"), "master_key_path": masterPath, "old_version": vs[0], "new_version": vs[1]})
	if _, err := s2.Check(ctx, env); err == nil {
		t.Error("a missing environment file passed")
	}
}

func TestReencryptUndecryptableFails(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 10}})
	ctx := context.Background()
	newMaster, _ := ll.NewMasterKey()
	vs := w.putMasterKeys(w.master, newMaster)
	envFile := w.writeEnvFile(false)
	stray, _ := ll.Encrypt(secret.New("sk-another-key-0123456789"), []byte("sk-upstream"), ll.FormatV3GCM)
	if _, err := w.pool.Exec(ctx, `UPDATE "LiteLLM_Config" SET param_value = param_value || jsonb_build_object('STRAY_KEY', $1::text)
        WHERE param_name = 'environment_variables'`, stray); err != nil {
		t.Fatal(err)
	}
	before := w.dumpAll()
	with := map[string]any{"env_file": envFile, "master_key_path": masterPath, "old_version": vs[0], "new_version": vs[1]}
	s := newStep(t, ReencryptSpec, with)
	env := w.env("run-undecryptable")
	_, err := s.Check(ctx, env)
	var ue *ll.UndecryptableError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "LiteLLM_Config row environment_variables field STRAY_KEY") {
		t.Fatalf("check: %v", err)
	}
	if _, err := s.Apply(ctx, env); !errors.As(err, &ue) {
		t.Fatalf("apply: %v", err)
	}
	if !reflect.DeepEqual(before, w.dumpAll()) {
		t.Fatal("a failed re-encryption changed rows")
	}
	with["allow_undecryptable"] = true
	s = newStep(t, ReencryptSpec, with)
	obs, err := s.Check(ctx, env)
	if err != nil || !strings.Contains(obs.Change, "1 undecryptable") {
		t.Fatalf("check allowed: %+v %v", obs, err)
	}
	out, err := s.Apply(ctx, env)
	if err != nil || out["undecryptable"] != "1" {
		t.Fatalf("apply allowed: %v %v", out, err)
	}
}
