// Package ansiblevault holds the step kind that keeps a key in an
// ansible-vault encrypted variables file in step with Vault.
package ansiblevault

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/runbook-dev/runbook/internal/ansiblevault"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	stepvault "github.com/runbook-dev/runbook/internal/step/vault"
	"github.com/runbook-dev/runbook/internal/vault"
)

// SetVarSpec is the `ansible_vault.set_var` kind.
var SetVarSpec = &step.Spec{
	Name:    "ansible_vault.set_var",
	Summary: "set a variable in an ansible-vault encrypted vars file to a key read from Vault",
	Target:  step.Once,
	Params: []step.Param{
		{Name: "file", Type: step.String, Required: true, Doc: "the vars file on the runner (whole-file encrypted, or plain YAML with !vault values)"},
		{Name: "var", Type: step.String, Default: "litellm_master_key", Doc: "the top-level variable to set"},
		{Name: "path", Type: step.String, Default: "litellm/master", Doc: "KV v2 path of the key in Vault", Validate: stepvault.ValidatePath},
		{Name: "field", Type: step.String, Default: "key", Doc: "data field of the key"},
		{Name: "version", Type: step.Int, Doc: "the Vault version to use (default: the current one)"},
		{Name: "password_file", Type: step.String, Doc: "file holding the vault password"},
		{Name: "password_env", Type: step.String, Doc: "environment variable holding the vault password"},
		{Name: "vault_id", Type: step.String, Doc: "vault id label to write (default: keep the file's)"},
		{Name: "style", Type: step.String, Default: "file", Allowed: []string{"file", "inline"},
			Doc: "for a new file: encrypt the whole file, or write plain YAML with an inline !vault value (an existing file keeps its style)"},
	},
	Outputs: []string{"fingerprint", "version"},
	New:     newSetVar,
}

// SetVar keeps one variable of a vars file equal to a key in Vault.
type SetVar struct {
	File         string
	Var          string
	Path         string
	Field        string
	Version      int
	PasswordFile string
	PasswordEnv  string
	Label        string
	Inline       bool
}

var (
	_ step.Step     = (*SetVar)(nil)
	_ step.Verifier = (*SetVar)(nil)
)

func newSetVar(p step.Params) (step.Step, error) {
	s := &SetVar{
		File: p.String("file"), Var: p.String("var"), Path: p.String("path"), Field: p.String("field"),
		Version: p.Int("version"), PasswordFile: p.String("password_file"), PasswordEnv: p.String("password_env"),
		Label: p.String("vault_id"), Inline: p.String("style") == "inline",
	}
	if s.Var == "" {
		s.Var = "litellm_master_key"
	}
	if s.Path == "" {
		s.Path = "litellm/master"
	}
	if s.Field == "" {
		s.Field = "key"
	}
	if s.File == "" {
		return nil, &step.ParamError{Param: "file", Err: errors.New("required")}
	}
	if (s.PasswordFile == "") == (s.PasswordEnv == "") {
		return nil, &step.ParamError{Param: "password_file", Err: errors.New("give exactly one of password_file and password_env")}
	}
	if s.Version < 0 {
		return nil, &step.ParamError{Param: "version", Err: errors.New("must be positive")}
	}
	if !ansiblevault.ValidVarName(s.Var) {
		return nil, &step.ParamError{Param: "var", Err: fmt.Errorf("%q is not a variable name", s.Var)}
	}
	return s, nil
}

func (s *SetVar) password(env *step.Env) (secret.Value, error) {
	var pw secret.Value
	var err error
	if s.PasswordFile != "" {
		pw, err = ansiblevault.PasswordFromFile(s.PasswordFile)
	} else {
		pw, err = ansiblevault.PasswordFromEnv(s.PasswordEnv)
	}
	if err != nil {
		return secret.Value{}, err
	}
	if env.Secrets != nil {
		env.Secrets.Add(pw)
	}
	return pw, nil
}

// key reads the key from Vault.
func (s *SetVar) key(ctx context.Context, env *step.Env) (*vault.Entry, secret.Value, error) {
	c, err := stepvault.Client(ctx, env)
	if err != nil {
		return nil, secret.Value{}, err
	}
	var e *vault.Entry
	if s.Version > 0 {
		e, err = c.ReadVersion(ctx, s.Path, s.Version, vault.PlainFields...)
	} else {
		e, err = c.ReadCurrent(ctx, s.Path)
	}
	if err != nil {
		return nil, secret.Value{}, err
	}
	k := e.Secret(s.Field)
	if k.IsZero() {
		return nil, secret.Value{}, fmt.Errorf("%s version %d has no field %q", c.Display(s.Path), e.Version, s.Field)
	}
	if env.Secrets != nil {
		env.Secrets.Add(k)
	}
	return e, k, nil
}

// observe returns the file's bytes (nil when absent), whether the variable
// already holds want, encrypted, and a description of what differs.
func (s *SetVar) observe(env *step.Env, want secret.Value, pw secret.Value) (data []byte, ok bool, what string, err error) {
	data, err = os.ReadFile(s.File)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Sprintf("create %s with %s encrypted", s.File, s.Var), nil
	}
	if err != nil {
		return nil, false, "", err
	}
	v, found, err := ansiblevault.ReadVar(data, s.Var, pw)
	if err != nil {
		return nil, false, "", fmt.Errorf("read %s from %s: %w", s.Var, s.File, err)
	}
	if env.Secrets != nil && found {
		env.Secrets.Add(v.Value)
	}
	switch {
	case !found:
		return data, false, fmt.Sprintf("add %s to %s", s.Var, s.File), nil
	case !v.Encrypted:
		return data, false, fmt.Sprintf("encrypt %s in %s (it is in clear) and set it to the key %s", s.Var, s.File, want.Fingerprint()), nil
	case !v.Value.Equal(want):
		return data, false, fmt.Sprintf("set %s in %s from %s to %s", s.Var, s.File, v.Value.Fingerprint(), want.Fingerprint()), nil
	}
	if s.Label != "" && v.Envelope.Label != s.Label {
		return data, false, fmt.Sprintf("re-encrypt %s in %s under vault id %s", s.Var, s.File, s.Label), nil
	}
	return data, true, "", nil
}

func outputs(e *vault.Entry, k secret.Value) step.Outputs {
	return step.Outputs{"fingerprint": k.Fingerprint(), "version": strconv.Itoa(e.Version)}
}

// Check implements step.Step: it decrypts the file and compares the
// variable with the key in Vault.
func (s *SetVar) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	e, k, err := s.key(ctx, env)
	if err != nil {
		return step.Observation{}, fmt.Errorf("ansible_vault.set_var: %w", err)
	}
	pw, err := s.password(env)
	if err != nil {
		return step.Observation{}, fmt.Errorf("ansible_vault.set_var: %w", err)
	}
	_, ok, what, err := s.observe(env, k, pw)
	if err != nil {
		return step.Observation{}, fmt.Errorf("ansible_vault.set_var: %w", err)
	}
	if ok {
		return step.Observation{Outputs: outputs(e, k)}, nil
	}
	return step.Observation{Change: what}, nil
}

// Apply implements step.Step: it rewrites the file atomically, mode 0600.
func (s *SetVar) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	e, k, err := s.key(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("ansible_vault.set_var: %w", err)
	}
	pw, err := s.password(env)
	if err != nil {
		return nil, fmt.Errorf("ansible_vault.set_var: %w", err)
	}
	data, ok, _, err := s.observe(env, k, pw)
	if err != nil {
		return nil, fmt.Errorf("ansible_vault.set_var: %w", err)
	}
	if ok {
		return outputs(e, k), nil
	}
	out, err := ansiblevault.SetVar(data, s.Var, k, pw, ansiblevault.SetOptions{Label: s.Label, Inline: s.Inline})
	if err != nil {
		return nil, fmt.Errorf("ansible_vault.set_var: %s: %w", s.File, err)
	}
	if err := writeAtomic(s.File, out); err != nil {
		return nil, fmt.Errorf("ansible_vault.set_var: %w", err)
	}
	if env.Log != nil {
		env.Log.Info("updated an encrypted variable", "file", s.File, "var", s.Var, "fingerprint", k.Fingerprint())
	}
	return outputs(e, k), nil
}

// Verify implements step.Verifier.
func (s *SetVar) Verify(ctx context.Context, env *step.Env) error {
	obs, err := s.Check(ctx, env)
	if err != nil {
		return err
	}
	if !obs.OK() {
		return fmt.Errorf("ansible_vault.set_var: verify: still to do: %s", obs.Change)
	}
	return nil
}

// writeAtomic replaces path (through a symlink, the file it points to) with
// data: a 0600 temporary file in the same folder, synced, renamed over it,
// and the folder synced.
func writeAtomic(path string, data []byte) error {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
