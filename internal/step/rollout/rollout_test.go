package rollout

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport/local"
)

func TestParams(t *testing.T) {
	st, err := Spec.New(step.Params{})
	if err != nil {
		t.Fatal(err)
	}
	r := st.(*Rollout)
	if r.MaxUnavailable != 1 || r.MinHealthy != -1 || r.Path != "litellm/master" || r.KeyVar != litellm.EnvMasterKey ||
		r.Salt != SaltRequire || r.Probe != ProbeHTTP || r.Deadline != time.Minute || strings.Join(r.Hosts, ",") != "gateways" {
		t.Fatalf("defaults: %+v", r)
	}
	st, err = Spec.New(step.Params{"min_healthy": 0, "max_unavailable": 2})
	if err != nil || st.(*Rollout).MinHealthy != 0 || st.(*Rollout).MaxUnavailable != 2 {
		t.Fatalf("min_healthy 0: %v", err)
	}
	for name, p := range map[string]step.Params{
		"max_unavailable 0":   {"max_unavailable": 0},
		"min_healthy -1":      {"min_healthy": -1},
		"negative version":    {"version": -2},
		"relative env file":   {"env_file": "litellm.env"},
		"unit with a space":   {"unit": "lite llm"},
		"unit option":         {"unit": "--now"},
		"key var":             {"key_var": "LITELLM-KEY"},
		"salt as key var":     {"key_var": litellm.EnvSaltKey},
		"vault path":          {"path": "../x"},
		"sample path":         {"sample_key_path": "a//b"},
		"drain alone":         {"drain": []string{"/bin/true"}},
		"empty drain program": {"drain": []string{""}, "undrain": []string{"x"}},
		"pin on rollback":     {"mode": ModeRollback, "salt": SaltPin},
		"lift run id":         {"lift_run_id": "a b"},
		"lift tag":            {"lift_tag": "x;y"},
	} {
		if _, err := Spec.New(p); err == nil {
			t.Errorf("%s accepted", name)
		} else {
			var pe *step.ParamError
			if !errors.As(err, &pe) {
				t.Errorf("%s: %v is not a ParamError", name, err)
			}
		}
	}
}

func TestJudge(t *testing.T) {
	names := []string{"new", "old"}
	want := []int{200, 401}
	ok, desc := judge(litellm.Health{Liveliness: 200, Readiness: 200, DB: "connected", Models: []int{200, 401}}, names, want)
	if !ok {
		t.Fatalf("not passed: %s", desc)
	}
	for _, h := range []litellm.Health{
		{Liveliness: 503, Readiness: 200, DB: "connected", Models: []int{200, 401}},
		{Liveliness: 200, Readiness: 200, DB: "Not connected", Models: []int{200, 401}},
		{Liveliness: 200, Readiness: 200, DB: "connected", Models: []int{200, 200}},
		{Liveliness: 200, Readiness: 200, DB: "connected", Models: []int{401, 401}},
		{Liveliness: 200, Readiness: 200, DB: "connected", Models: []int{200}},
		{},
	} {
		if ok, desc := judge(h, names, want); ok {
			t.Errorf("%+v passed: %s", h, desc)
		}
	}
	_, desc = judge(litellm.Health{Liveliness: 200, Readiness: 200, DB: "connected", Models: []int{401, 200}}, names, want)
	if desc != "liveliness 200, readiness 200 with db connected, new: /v1/models 401 (want 200), old: /v1/models 200 (want 401)" {
		t.Errorf("description: %s", desc)
	}
}

func TestHaltErrorIsNotRetried(t *testing.T) {
	err := fmt.Errorf("apply: %w", &HaltError{Host: "gw2", Cause: "gate", Hosts: []HostState{
		{Host: "gw1", State: StateRotated, Version: "3", Fingerprint: "sha256:aa"},
		{Host: "gw2", State: StateRolledBack, Version: "2", Fingerprint: "sha256:bb"},
		{Host: "gw3", State: StateUntouched, Fingerprint: "sha256:cc"},
	}})
	if step.IsRetryable(err) || !errors.Is(err, ErrHalted) {
		t.Fatal(err)
	}
	want := "apply: rollout halted at gw2: gate; gw1 runs version 3 (sha256:aa; rotated), gw2 runs version 2 (sha256:bb; rolled back), gw3 runs a key Vault does not hold (sha256:cc; untouched)"
	if err.Error() != want {
		t.Errorf("%s", err)
	}
}

// TestWriteScript runs the atomic write on this machine through the local
// transport, as the SSH transport runs it on a gateway.
func TestWriteScript(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the tests do not run as root")
		}
		t.Skip("the write keeps a file's owner: needs root to give the test file another one")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "litellm.env")
	old := "# env\nLITELLM_MASTER_KEY=sk-old-0123456789\nDATABASE_URL=postgres://x\n"
	if err := os.WriteFile(path, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	const uid, gid = 65534, 65534
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	r := &Rollout{}
	env := &step.Env{Secrets: &secret.Masker{}}
	tg := &target{name: "local", tr: local.New("local"), envFile: path}
	newText := secret.New(strings.Replace(old, "sk-old-0123456789", "sk-new-0123456789", 1))
	if err := r.write(context.Background(), env, tg, newText, true); err != nil {
		t.Fatal(err)
	}
	check := func(p, want string) {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != want {
			t.Errorf("%s holds %q", p, b)
		}
		fi, _ := os.Stat(p)
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o600 || st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: mode %v owner %d:%d", p, fi.Mode().Perm(), st.Uid, st.Gid)
		}
	}
	check(path, newText.Reveal())
	check(path+".prev", old)
	// Without keep, the previous file stays as it was.
	if err := r.write(context.Background(), env, tg, secret.New(old), false); err != nil {
		t.Fatal(err)
	}
	check(path, old)
	check(path+".prev", old)
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("files left: %v", ents)
	}
	// Not a regular file: refused, nothing written, no key in the error.
	tg.envFile = dir
	err := r.write(context.Background(), env, tg, newText, true)
	if err == nil || strings.Contains(err.Error(), "sk-new") {
		t.Fatalf("a directory as the file: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("files left after a refused write: %v", ents)
	}
}
