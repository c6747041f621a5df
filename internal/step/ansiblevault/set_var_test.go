package ansiblevault

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/ansiblevault"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/vault"
)

type deps struct{ c *vault.Client }

func (d deps) Vault(context.Context) (*vault.Client, error) { return d.c, nil }

func TestSetVar(t *testing.T) {
	av, err := exec.LookPath("ansible-vault")
	if err != nil {
		labtest.Missing(t, "ansible-vault is not installed (apt-get install ansible)")
	}
	l := labtest.Up(t, lab.Config{Vault: true})
	ctx := context.Background()
	c, err := vault.New(ctx, vault.Config{Address: l.Vault.Addr, Token: l.Vault.RunnerToken})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := c.ReadCurrent(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	key := cur.Secret("key")

	dir := t.TempDir()
	pwFile := filepath.Join(dir, "vault-pass")
	if err := os.WriteFile(pwFile, []byte("lab vault password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "group_vars", "gateways", "vault.yml")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	// A file ansible-vault made, holding a stale key.
	if err := os.WriteFile(file, []byte("litellm_master_key: sk-stale\nregion: eu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(av, "encrypt", "--vault-password-file="+pwFile, file)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ansible-vault encrypt: %v\n%s", err, out)
	}

	s, err := newSetVar(step.Params{"file": file, "password_file": pwFile})
	if err != nil {
		t.Fatal(err)
	}
	env := &step.Env{RunID: "run-1", Deps: deps{c}, Secrets: &secret.Masker{}}
	before, _ := os.ReadFile(file)
	obs, err := s.Check(ctx, env)
	if err != nil || obs.OK() || !strings.Contains(obs.Change, key.Fingerprint()) {
		t.Fatalf("check: %+v %v", obs, err)
	}
	if strings.Contains(obs.Change, key.Reveal()) || strings.Contains(obs.Change, "sk-stale") {
		t.Fatal("the plan shows a key")
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Fatal("check changed the file")
	}
	out, err := s.Apply(ctx, env)
	if err != nil || out["fingerprint"] != key.Fingerprint() {
		t.Fatalf("apply: %v %v", out, err)
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
	// ansible-vault reads what the step wrote.
	cmd = exec.Command(av, "decrypt", "--vault-password-file="+pwFile, "--output=-", file)
	plain, err := cmd.Output()
	if err != nil {
		t.Fatalf("ansible-vault decrypt: %v", err)
	}
	if !strings.Contains(string(plain), "litellm_master_key: "+key.Reveal()) || !strings.Contains(string(plain), "region: eu") {
		t.Fatal("ansible-vault does not see the new key, or lost the other variable")
	}
	obs, err = s.Check(ctx, env)
	if err != nil || !obs.OK() || obs.Outputs["fingerprint"] != key.Fingerprint() {
		t.Fatalf("check after apply: %+v %v", obs, err)
	}

	// A wrong password is an error that names neither password nor key.
	bad := filepath.Join(dir, "bad-pass")
	if err := os.WriteFile(bad, []byte("nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sb, _ := newSetVar(step.Params{"file": file, "password_file": bad})
	if _, err := sb.Check(ctx, env); err == nil || strings.Contains(err.Error(), key.Reveal()) {
		t.Fatalf("wrong password: %v", err)
	}

	// An inline variable in a plain file, password from the environment.
	inline := filepath.Join(dir, "inline.yml")
	if err := os.WriteFile(inline, []byte("port: 4000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("RUNBOOK_TEST_ANSIBLE_PASS", "lab vault password")
	si, err := newSetVar(step.Params{"file": inline, "password_env": "RUNBOOK_TEST_ANSIBLE_PASS", "vault_id": "prod"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := si.Apply(ctx, env); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(inline)
	if strings.Contains(string(data), key.Reveal()) || !strings.HasPrefix(string(data), "port: 4000\nlitellm_master_key: !vault |\n  $ANSIBLE_VAULT;1.2;AES256;prod\n") {
		t.Fatalf("inline file:\n%s", data)
	}
	v, found, err := ansiblevault.ReadVar(data, "litellm_master_key", secret.New("lab vault password"))
	if err != nil || !found || !v.Value.Equal(key) {
		t.Fatalf("read back: %v", err)
	}
	if obs, err := si.Check(ctx, env); err != nil || !obs.OK() {
		t.Fatalf("inline check after apply: %+v %v", obs, err)
	}
}

func TestSetVarParams(t *testing.T) {
	for _, p := range []step.Params{
		{"password_file": "x"},
		{"file": "f"},
		{"file": "f", "password_file": "x", "password_env": "Y"},
		{"file": "f", "password_file": "x", "var": "bad-name"},
	} {
		if _, err := newSetVar(p); err == nil {
			t.Errorf("%v accepted", p)
		}
	}
}
