package lab_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
)

// TestVaultSealAndUnseal seals the lab's Vault server through its API and
// unseals it with the key the server wrote: a sealed Vault answers 503
// "Vault is sealed", and once unsealed it is active again with everything
// it stored, the runner's token included.
func TestVaultSealAndUnseal(t *testing.T) {
	l := labtest.Up(t, lab.Config{Vault: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	keyFile := filepath.Join(l.Vault.Dir, lab.UnsealKeyFile)
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s is %v, want 0600", keyFile, fi.Mode().Perm())
	}
	if l.Vault.UnsealKey.IsZero() {
		t.Fatal("the lab holds no unseal key")
	}
	// Reopened from its state, the lab has the same key.
	again, err := lab.Load(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Vault.UnsealKey.Reveal() != l.Vault.UnsealKey.Reveal() {
		t.Error("the lab loaded from its state holds another unseal key")
	}

	runner, err := l.Vault.Client(l.Vault.RunnerToken)
	if err != nil {
		t.Fatal(err)
	}
	kv := runner.KVv2("secret")
	if _, err := kv.Put(ctx, "litellm/seal-test", map[string]any{"key": "before the seal"}); err != nil {
		t.Fatalf("runner writes secret/litellm/seal-test: %v", err)
	}

	start := time.Now()
	if err := l.Vault.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("sealed in %v", time.Since(start).Round(time.Millisecond))
	_, err = kv.Get(ctx, "litellm/seal-test")
	var re *vaultapi.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusServiceUnavailable || !strings.Contains(strings.Join(re.Errors, "; "), "Vault is sealed") {
		t.Fatalf("read from the sealed Vault: %v, want 503 Vault is sealed", err)
	}
	if _, err := kv.Put(ctx, "litellm/seal-test", map[string]any{"key": "while sealed"}); err == nil {
		t.Fatal("the sealed Vault took a write")
	}

	start = time.Now()
	if err := l.Vault.Unseal(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("unsealed and active in %v", time.Since(start).Round(time.Millisecond))
	s, err := kv.Get(ctx, "litellm/seal-test")
	if err != nil {
		t.Fatalf("runner reads secret/litellm/seal-test after the unseal: %v", err)
	}
	if got, _ := s.Data["key"].(string); got != "before the seal" {
		t.Errorf("secret/litellm/seal-test holds %q after the unseal, want %q", got, "before the seal")
	}
	if s.VersionMetadata == nil || s.VersionMetadata.Version != 1 {
		t.Errorf("secret/litellm/seal-test version %+v after the unseal, want 1", s.VersionMetadata)
	}
	m, err := kv.Get(ctx, "litellm/master")
	if err != nil {
		t.Fatalf("runner reads secret/litellm/master after the unseal: %v", err)
	}
	if got, _ := m.Data["key"].(string); got != l.MasterKey.Reveal() {
		t.Error("secret/litellm/master does not hold the master key after the unseal")
	}
	root, err := l.Vault.Client(l.Vault.RootToken)
	if err != nil {
		t.Fatal(err)
	}
	h, err := root.Sys().HealthWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Sealed || h.Standby || !h.Initialized {
		t.Errorf("after the unseal: sealed %v, standby %v, initialized %v", h.Sealed, h.Standby, h.Initialized)
	}
	// The server's log holds no key.
	log, err := os.ReadFile(filepath.Join(l.Vault.Dir, "vault.log"))
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{"unseal key": l.Vault.UnsealKey.Reveal(), "root token": l.Vault.RootToken.Reveal()} {
		if bytes.Contains(log, []byte(s)) {
			t.Errorf("vault.log holds the %s", name)
		}
	}
}
