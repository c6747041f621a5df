// Package playbooks holds the Ansible entry points; this test runs the key
// rotation playbook with the real ansible-playbook against the lab.
package playbooks

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/vault"
)

func TestSyntax(t *testing.T) {
	ap := ansiblePlaybook(t)
	files, _ := filepath.Glob("*.yml")
	if len(files) != 3 {
		t.Fatalf("%d playbooks", len(files))
	}
	for _, f := range files {
		if out, err := exec.Command(ap, "--syntax-check", "-i", "localhost,", f).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", f, err, out)
		}
	}
}

// TestKeyRotationPlaybookOnTheLab runs litellm_key_rotation.yml (rotate-master)
// on the lab: afterwards Vault's current master key is a new version.
func TestKeyRotationPlaybookOnTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the lab")
	}
	ap := ansiblePlaybook(t)
	lb := labtest.Full(t, 3)
	dir := t.TempDir()
	bin := filepath.Join(dir, "runbook")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/runbook").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	runbooks, err := filepath.Abs("../runbooks")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ap, "-i", "localhost,", "-c", "local", "litellm_key_rotation.yml",
		"-e", "runbook_bin="+bin, "-e", "runbook_inventory="+lb.InventoryPath,
		"-e", `{"runbook_extra_args": ["--runbooks", "`+runbooks+`", "--state", "`+filepath.Join(dir, "state")+`", "--records", "`+filepath.Join(dir, "records")+`"]}`)
	cmd.Env = append(os.Environ(), "VAULT_ADDR="+lb.Vault.Addr, "VAULT_TOKEN="+lb.Vault.RunnerToken.Reveal(),
		"DATABASE_URL="+lb.DatabaseURL, "ANSIBLE_NOCOLOR=1", "ANSIBLE_HOST_KEY_CHECKING=False")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("ansible-playbook litellm_key_rotation.yml: %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("ansible-playbook: %v\n%s", err, out)
	}
	if strings.Contains(string(out), lb.MasterKey.Reveal()) {
		t.Error("the old master key is in the playbook's output")
	}
	ctx := context.Background()
	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := vc.ReadCurrent(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	if cur.Version < 2 || cur.Secret("key").Equal(lb.MasterKey) {
		t.Fatalf("Vault's current master key is version %d, want a new one\n%s", cur.Version, out)
	}
	if strings.Contains(string(out), cur.Secret("key").Reveal()) {
		t.Error("the new master key is in the playbook's output")
	}
	if recs, _ := filepath.Glob(filepath.Join(dir, "records", "*-rotate-master-*.json")); len(recs) != 1 {
		t.Errorf("%d records of the run", len(recs))
	}

	// A failing runner fails the play.
	bad := exec.Command(ap, "-i", "localhost,", "-c", "local", "litellm_key_rotation.yml",
		"-e", "runbook_bin="+bin, "-e", "runbook_inventory="+filepath.Join(dir, "missing.yaml"))
	bad.Env = append(os.Environ(), "ANSIBLE_NOCOLOR=1")
	if b, err := bad.CombinedOutput(); err == nil {
		t.Errorf("the play passed with a runner that failed:\n%s", b)
	}
}

func ansiblePlaybook(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ansible-playbook")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ansible-playbook is not installed")
		}
		t.Skip("ansible-playbook is not installed")
	}
	return p
}
