package cli

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

// TestRotateVirtualKeysOnTheLab runs the age-policy rotation with a 30-day
// policy against the lab's seeded keys (created 1 to 90 days ago): keys past
// the age get a new value in Vault that the gateways accept, their old value
// stays accepted for the grace period, younger keys are untouched, and every
// gateway serves again at the end.
func TestRotateVirtualKeysOnTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the lab")
	}
	lb := labtest.Full(t, 3)
	ctx := context.Background()
	w := newWorkdir(t, "", nil)
	env := labRunbookEnv(t, lb)
	start := time.Now()
	out, errOut, code := w.run(env, "exec", "rotate-virtual-keys", "--yes", "--input", "max_age=30d", "--input", "grace=1h")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("took %v:\n%s", time.Since(start).Round(time.Millisecond), out)

	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	gw := lb.Gateways[0].URL()
	for _, g := range lb.Gateways {
		if st := status(t, g.URL(), lb.MasterKey); st != 200 {
			t.Errorf("%s: master key gets %d after the rotation, want 200", g.Name, st)
		}
	}
	secrets := []secret.Value{lb.MasterKey}
	reissued, kept := 0, 0
	now := time.Now()
	for _, k := range lb.Seed.Keys {
		secrets = append(secrets, k.Key)
		name := k.Alias
		if name == "" {
			name = k.Hash
		}
		e, err := vc.Read(ctx, "litellm/virtual-keys/"+name)
		if errors.Is(err, vault.ErrNotFound) {
			kept++
			if k.Valid(now) {
				if st := status(t, gw, k.Key); st != 200 {
					t.Errorf("untouched key %s gets %d", name, st)
				}
			}
			continue
		}
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		reissued++
		nk := e.Secret("key")
		secrets = append(secrets, nk)
		if !k.Valid(now) {
			continue
		}
		if st := status(t, gw, nk); st != 200 {
			t.Errorf("new key for %s gets %d, want 200", name, st)
		}
		if st := status(t, gw, k.Key); st != 200 {
			t.Errorf("old key for %s gets %d during its grace period, want 200", name, st)
		}
	}
	t.Logf("%d keys re-issued, %d younger than 30d kept", reissued, kept)
	if reissued == 0 || kept == 0 {
		t.Errorf("re-issued %d, kept %d: a 30-day policy over keys 1 to 90 days old should do both", reissued, kept)
	}
	if !strings.Contains(out, "rotate-virtual-keys") {
		t.Errorf("output does not name the run:\n%s", out)
	}
	leakScan(t, secrets, map[string][]byte{"stdout": []byte(out), "stderr": []byte(errOut)}, w.dir)
}
