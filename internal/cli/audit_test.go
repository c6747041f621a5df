package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/audit"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
)

type auditJSON struct {
	Results []audit.Result `json:"results"`
	Fail    int            `json:"fail"`
}

func (a auditJSON) find(check, target string) *audit.Result {
	for i, r := range a.Results {
		if r.Check == check && (target == "" || r.Target == target) {
			return &a.Results[i]
		}
	}
	return nil
}

func TestParseDays(t *testing.T) {
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "36h": 36 * time.Hour, "1d": 24 * time.Hour} {
		if got, err := parseDays("x", in); err != nil || got != want {
			t.Errorf("parseDays(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0d", "-1d", "d", "1.5d", "soon", "-3h"} {
		if _, err := parseDays("x", in); err == nil {
			t.Errorf("parseDays(%q) accepted", in)
		}
	}
}

// TestAuditOnTheLab runs runbook audit against the lab: a clean state
// passes every check it can answer; then a master key planted in a client
// configuration file on a gateway, a virtual key made over-age, a runbook
// DROP rule left in place and an over-privileged token each fail, with
// exit status 6, and no key value in the output.
func TestAuditOnTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the lab")
	}
	lb := labtest.Full(t, 3)
	ctx := context.Background()
	w := newWorkdir(t, "", nil)

	// The first gateway names a client configuration file to scan.
	clientDir := t.TempDir()
	cfgFile := filepath.Join(clientDir, "open-webui.env")
	if err := os.WriteFile(cfgFile, []byte("OPENAI_API_BASE_URL=http://gateway:4000\nOPENAI_API_KEY="+lb.Seed.Keys[0].Key.Reveal()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inv, err := os.ReadFile(lb.InventoryPath)
	if err != nil {
		t.Fatal(err)
	}
	gw1 := lb.Gateways[0].Name
	text := strings.Replace(string(inv), "    vars: {litellm_url: ", "    vars: {client_config_files: "+q(cfgFile)+", litellm_url: ", 1)
	if text == string(inv) {
		t.Fatal("cannot add client_config_files to the lab inventory")
	}
	invPath := filepath.Join(w.dir, "audit-inventory.yaml")
	if err := os.WriteFile(invPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(labEnv(lb), "RUNBOOK_INVENTORY="+invPath)

	start := time.Now()
	out, errOut, code := w.run(env, "audit", "-o", "json")
	t.Logf("clean audit: %v", time.Since(start).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("clean audit: exit %d\n%s%s", code, out, errOut)
	}
	cleanOut := out
	var clean auditJSON
	if err := json.Unmarshal([]byte(out), &clean); err != nil {
		t.Fatalf("audit JSON: %v\n%s", err, out)
	}
	for _, c := range []struct{ check, target string }{
		{audit.CheckMasterKeyAge, ""}, {audit.CheckVirtualKeyAge, ""}, {audit.CheckRequestRate, ""},
		{audit.CheckMasterInConfig, gw1}, {audit.CheckVaultToken, ""},
		{audit.CheckContainment, lb.Gateways[0].Name}, {audit.CheckContainment, lb.Gateways[2].Name},
	} {
		r := clean.find(c.check, c.target)
		if r == nil || r.Status != audit.Pass {
			t.Errorf("clean state: %s %s: %+v", c.check, c.target, r)
		}
	}

	// Plant the master key, age a virtual key, leave a DROP rule.
	if err := os.WriteFile(cfgFile, []byte("OPENAI_API_KEY="+lb.MasterKey.Reveal()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := lb.Seed.Keys[3]
	conn := connectDB(t, lb.DatabaseURL)
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE "LiteLLM_VerificationToken" SET created_at = now() - interval '200 days', last_rotation_at = NULL, blocked = false, expires = NULL WHERE token = $1`, old.Hash); err != nil {
		t.Fatal(err)
	}
	gw2 := lb.Gateways[1]
	rule := []string{"netns", "exec", gw2.Namespace, "iptables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", "4000", "-m", "comment", "--comment", "runbook:20260101T000000Z-test:drop-port", "-j", "DROP"}
	if b, err := exec.Command("ip", rule...).CombinedOutput(); err != nil {
		t.Fatalf("plant a DROP rule: %v\n%s", err, b)
	}

	start = time.Now()
	out, errOut, code = w.run(env, "audit", "-o", "json")
	t.Logf("audit with findings: %v", time.Since(start).Round(time.Millisecond))
	if code != ExitAuditFailed {
		t.Fatalf("audit with findings: exit %d, want %d\n%s%s", code, ExitAuditFailed, out, errOut)
	}
	var bad auditJSON
	if err := json.Unmarshal([]byte(out), &bad); err != nil {
		t.Fatalf("audit JSON: %v\n%s", err, out)
	}
	if r := bad.find(audit.CheckMasterInConfig, gw1); r == nil || r.Status != audit.Fail || !strings.Contains(strings.Join(r.Details, "\n"), cfgFile) {
		t.Errorf("planted master key: %+v", r)
	}
	label := old.Alias
	if label == "" {
		label = "sk-..."
	}
	if r := bad.find(audit.CheckVirtualKeyAge, ""); r == nil || r.Status != audit.Fail || !strings.Contains(strings.Join(r.Details, "\n"), label) {
		t.Errorf("over-age virtual key %q: %+v", label, r)
	}
	if r := bad.find(audit.CheckContainment, gw2.Name); r == nil || r.Status != audit.Fail {
		t.Errorf("DROP rule left on %s: %+v", gw2.Name, r)
	}
	if r := bad.find(audit.CheckContainment, lb.Gateways[0].Name); r == nil || r.Status != audit.Pass {
		t.Errorf("no rule on %s: %+v", lb.Gateways[0].Name, r)
	}

	// The text table, with the root token: the token check fails too.
	rootEnv := append(append([]string(nil), env...), "VAULT_TOKEN="+lb.Vault.RootToken.Reveal())
	text2, errOut2, code := w.run(rootEnv, "audit")
	if code != ExitAuditFailed {
		t.Fatalf("audit with the root token: exit %d\n%s%s", code, text2, errOut2)
	}
	for _, want := range [][]string{{"FAIL", "vault-token-privileges", "vault"}, {"FAIL", "master-key-in-config", gw1}, {"FAIL", "virtual-key-age", "database"}} {
		if !hasRow(text2, want...) {
			t.Errorf("text output lacks a row %q:\n%s", want, text2)
		}
	}
	if !strings.Contains(errOut2, "runbook: error: audit: ") {
		t.Errorf("stderr: %s", errOut2)
	}
	t.Logf("text output:\n%s", text2)
	leakScan(t, []secret.Value{lb.MasterKey, lb.Seed.Keys[0].Key, old.Key},
		map[string][]byte{"clean": []byte(cleanOut), "findings": []byte(out), "text": []byte(text2 + errOut2)}, filepath.Join(w.dir, "state"))
}

// q quotes s for YAML's flow style.
func q(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// hasRow reports whether a line of a table starts with the given cells.
func hasRow(table string, cells ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(cells) && strings.Join(f[:len(cells)], " ") == strings.Join(cells, " ") {
			return true
		}
	}
	return false
}
