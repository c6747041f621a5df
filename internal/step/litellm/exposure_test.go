package litellm

import (
	"context"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	ll "github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
)

func TestExposureReport(t *testing.T) {
	for _, literal := range []bool{false, true} {
		t.Run("literal="+strconv.FormatBool(literal), func(t *testing.T) {
			w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 20, MasterKeyRequests: 36, MasterKeyLogLiteral: literal}})
			ctx := context.Background()
			newMaster, _ := ll.NewMasterKey()
			vs := w.putMasterKeys(w.master, newMaster)
			s := newStep(t, ExposureSpec, map[string]any{"master_key_path": masterPath, "master_key_version": vs[0], "since": "7d"})
			env := w.env("run-exposure")
			obs, err := s.Check(ctx, env)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(obs.Change, "record exposure report (36 requests from 3 addresses") {
				t.Errorf("change %q", obs.Change)
			}
			if len(w.deps.Notes()) != 0 {
				t.Fatal("check recorded a note")
			}
			out, err := s.Apply(ctx, env)
			if err != nil {
				t.Fatal(err)
			}
			if out["requests"] != "36" || out["addresses"] != "3" || out["first_seen"] == "" {
				t.Errorf("outputs %v", out)
			}
			notes := w.deps.Notes()
			if len(notes) != 1 || notes[0].Note.Kind != "exposure_report" {
				t.Fatalf("notes %+v", notes)
			}
			n := notes[0].Note
			for _, ip := range w.seed.MasterKeyIPs {
				if !strings.Contains(n.Text, ip) || !strings.Contains(n.Fields["by_address"], ip+" (12)") {
					t.Errorf("report misses %s:\n%s", ip, n.Text)
				}
			}
			for _, part := range []string{"By requester address", "By model", "By hour", "By key", "gpt-4o", "master key sha256:"} {
				if !strings.Contains(n.Text, part) {
					t.Errorf("report has no %q:\n%s", part, n.Text)
				}
			}
			if n.Fields["report_id"] != "run-exposure" {
				t.Errorf("report_id %q", n.Fields["report_id"])
			}
			// The spend is the sum of the master key rows.
			var spend float64
			key := w.seed.MasterKeyHash
			if literal {
				key = ll.MasterKeySpendLogKey
			}
			if err := w.pool.QueryRow(ctx, `SELECT sum(spend) FROM "LiteLLM_SpendLogs" WHERE api_key = $1`, key).Scan(&spend); err != nil {
				t.Fatal(err)
			}
			if n.Fields["spend"] != fmtSpend(spend) {
				t.Errorf("spend %s, want %s", n.Fields["spend"], fmtSpend(spend))
			}
			nj, _ := json.Marshal(n)
			assertNoSecrets(t, "note", string(nj), w.master, newMaster)
			t.Log("\n" + n.Text)
		})
	}
}

// TestExposureWithReissuedKeys counts the old values of the keys a run
// re-issued, and a window that starts after the requests finds nothing.
func TestExposureWithReissuedKeys(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 20, SpendLogsPerKey: 3}})
	ctx := context.Background()
	vs := w.putMasterKeys(w.master)
	const runID = "run-exposure-vk"
	if _, err := newStep(t, ReissueSpec, map[string]any{"all": true}).Apply(ctx, w.env(runID)); err != nil {
		t.Fatal(err)
	}
	s := newStep(t, ExposureSpec, map[string]any{"master_key_path": masterPath, "master_key_version": vs[0], "since": "7d", "virtual_keys": true})
	out, err := s.Apply(ctx, w.env(runID))
	if err != nil {
		t.Fatal(err)
	}
	if want := strconv.Itoa(20*3 + 30); out["requests"] != want {
		t.Errorf("requests %s, want %s", out["requests"], want)
	}
	notes := w.deps.Notes()
	last := notes[len(notes)-1].Note
	if !strings.Contains(last.Fields["keys"], "20 virtual keys re-issued by this run") || !strings.Contains(last.Text, "(old value)") {
		t.Errorf("report does not name the re-issued keys:\n%v\n%s", last.Fields, last.Text)
	}
	var all []secret.Value
	for _, k := range w.seed.Keys {
		all = append(all, k.Key)
	}
	nj, _ := json.Marshal(last)
	assertNoSecrets(t, "note", string(nj), append(all, w.master)...)

	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	s = newStep(t, ExposureSpec, map[string]any{"master_key_path": masterPath, "master_key_version": vs[0], "since": future})
	obs, err := s.Check(ctx, w.env(runID))
	if err != nil || !strings.Contains(obs.Change, "no request") {
		t.Errorf("empty window: %+v %v", obs, err)
	}
}

// TestChecksWriteNothing: planning each kind leaves every table and every
// Vault version as it was, and records no note.
func TestChecksWriteNothing(t *testing.T) {
	w := newWorld(t, worldOpts{seed: lab.SeedConfig{Keys: 30}})
	ctx := context.Background()
	newMaster, _ := ll.NewMasterKey()
	vs := w.putMasterKeys(w.master, newMaster)
	envFile := w.writeEnvFile(false)
	// Some keys already have values in Vault from an earlier run.
	if _, err := newStep(t, ReissueSpec, map[string]any{"teams": []string{"team-02"}}).Apply(ctx, w.env("run-earlier")); err != nil {
		t.Fatal(err)
	}
	notes := len(w.deps.Notes())
	db := w.dumpAll()
	vault := w.vaultState("litellm")
	steps := map[string]map[string]any{
		"reissue":   {"all": true},
		"reencrypt": {"env_file": envFile, "master_key_path": masterPath, "old_version": vs[0], "new_version": vs[1]},
		"exposure":  {"master_key_path": masterPath, "master_key_version": vs[0], "since": "72h", "virtual_keys": true},
	}
	specs := map[string]*step.Spec{"reissue": ReissueSpec, "reencrypt": ReencryptSpec, "exposure": ExposureSpec}
	for name, with := range steps {
		env := w.env("run-plan")
		env.DryRun = true
		obs, err := newStep(t, specs[name], with).Check(ctx, env)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if obs.OK() {
			t.Errorf("%s: no change planned", name)
		}
		t.Logf("%s: %s", name, obs.Change)
	}
	if !reflect.DeepEqual(db, w.dumpAll()) {
		t.Error("a check changed the database")
	}
	if got := w.vaultState("litellm"); !reflect.DeepEqual(vault, got) {
		t.Errorf("a check changed vault: %v -> %v", vault, got)
	}
	if len(w.deps.Notes()) != notes {
		t.Error("a check recorded a note")
	}
}
