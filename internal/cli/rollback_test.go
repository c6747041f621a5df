package cli

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	statefs "github.com/runbook-dev/runbook/internal/state/fs"
	"github.com/runbook-dev/runbook/internal/step/all"
	"github.com/runbook-dev/runbook/internal/step/rollout"
	"github.com/runbook-dev/runbook/internal/vault"
)

// rollbackRoot is the root command with rollback in it, whether or not
// root.go lists it yet.
func rollbackRoot(g *globals) *cobra.Command {
	root := newRootCommand(g)
	if c, _, err := root.Find([]string{"rollback"}); err != nil || c == root {
		root.AddCommand(newRollbackCommand(g))
	}
	return root
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	g := &globals{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut}
	root := rollbackRoot(g)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String() + errOut.String(), err
}

const rotateRunbook = `name: rotate-test
description: pin the salt key, write a new master key, roll it out
steps:
  - id: pin-salt
    kind: litellm.rollout
    with: {salt: pin, deadline: 30s}
  - id: newkey
    kind: vault.master_key
  - id: rollout
    kind: litellm.rollout
    with:
      version: ${{ steps.newkey.outputs.version }}
      deadline: 30s
      settle: 100ms
`

// TestRollbackLab runs a rotation through the command line against the
// lab, then rolls it back with 'runbook rollback RUN_ID'.
func TestRollbackLab(t *testing.T) {
	if _, ok := all.Registry().Lookup(rollout.Spec.Name); !ok {
		t.Fatal(rollout.Spec.Name + " is not in the registry (step/all)")
	}
	l := labtest.Up(t, lab.Config{Gateways: 2, Postgres: true, Vault: true})
	dir := t.TempDir()
	t.Setenv("VAULT_TOKEN", l.Vault.RunnerToken.Reveal())
	t.Setenv("DATABASE_URL", l.DatabaseURL)
	rbPath := filepath.Join(dir, "rotate.yaml")
	if err := os.WriteFile(rbPath, []byte(rotateRunbook), 0o644); err != nil {
		t.Fatal(err)
	}
	state, records := filepath.Join(dir, "state"), filepath.Join(dir, "records")
	common := []string{"--state", state, "--records", records, "-i", l.InventoryPath, "--operator", "tester"}

	out, err := runCLI(t, append([]string{"exec", rbPath, "--yes"}, common...)...)
	if err != nil {
		t.Fatalf("exec: %v\n%s", err, out)
	}
	store, err := statefs.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	runs, err := store.Runs(context.Background())
	store.Close()
	if err != nil || len(runs) != 1 {
		t.Fatalf("runs: %v %v", runs, err)
	}
	runID := runs[0].RunID

	vc, err := vault.New(context.Background(), vault.Config{Address: l.Vault.Addr, Token: l.Vault.RunnerToken})
	if err != nil {
		t.Fatal(err)
	}
	e2, err := vc.ReadVersion(context.Background(), "litellm/master", 2, vault.PlainFields...)
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := l.MasterKey, e2.Secret("key")
	status := func(g *lab.Gateway, k secret.Value) int {
		return litellm.ProbeHTTP(context.Background(), &http.Client{Timeout: 3 * time.Second}, g.URL(), []secret.Value{k}).Models[0]
	}
	for _, g := range l.Gateways {
		if status(g, k2) != 200 || status(g, k1) != 401 {
			t.Fatalf("%s does not run version 2 after the rotation", g.Name)
		}
	}

	out, err = runCLI(t, append([]string{"rollback", runID, "--yes"}, common...)...)
	if err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	for _, want := range []string{"step pin-salt pinned the salt key; it stays pinned", "rollback-rollout"} {
		if !strings.Contains(out, want) {
			t.Errorf("rollback output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, k1.Reveal()) || strings.Contains(out, k2.Reveal()) {
		t.Error("a key in the output")
	}
	for _, g := range l.Gateways {
		if status(g, k1) != 200 || status(g, k2) != 401 {
			t.Errorf("%s does not run version 1 after the rollback", g.Name)
		}
		b, _ := os.ReadFile(g.EnvPath())
		f, _ := litellm.ParseEnvFile(b)
		if salt, _ := f.Lookup(litellm.EnvSaltKey); !salt.Equal(k1) {
			t.Errorf("%s: the salt key is no longer pinned", g.Name)
		}
	}
	written, err := os.ReadFile(filepath.Join(records, "rollbacks", runID+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rollback output:\n%s\nrunbook written:\n%s", out, written)
	for _, want := range []string{"mode: rollback", "version: 2", "deadline: 30s"} {
		if !strings.Contains(string(written), want) {
			t.Errorf("the rollback runbook lacks %q:\n%s", want, written)
		}
	}

	// A second rollback finds every gateway on version 1 already.
	out, err = runCLI(t, append([]string{"rollback", runID, "--yes"}, common...)...)
	if err != nil || !strings.Contains(out, "0 changed, 1 ok") {
		t.Fatalf("second rollback: %v\n%s", err, out)
	}
}
