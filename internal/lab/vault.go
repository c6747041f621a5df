package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/runbook-dev/runbook/internal/secret"
)

// RunnerPolicy is the name of the Vault policy the runner's token carries.
const RunnerPolicy = "runbook-runner"

// RunnerPolicyHCL allows the runner the LiteLLM paths under the KV v2 mount
// secret/ and nothing else, but asking what its own token may do (which
// runbook audit uses).
const RunnerPolicyHCL = `# The runbook runner: LiteLLM keys under secret/litellm/, nothing else.
path "sys/capabilities-self" {
  capabilities = ["update"]
}
path "secret/data/litellm/*" {
  capabilities = ["create", "read", "update", "patch", "delete"]
}
path "secret/metadata/litellm/*" {
  capabilities = ["read", "list", "update", "delete"]
}
path "secret/delete/litellm/*" {
  capabilities = ["update"]
}
path "secret/undelete/litellm/*" {
  capabilities = ["update"]
}
path "secret/destroy/litellm/*" {
  capabilities = ["update"]
}
`

// Vault is a Vault server core run by the lab.
type Vault struct {
	Dir  string
	Addr string // http://127.0.0.1:PORT
	PID  int
	// RootToken is the server's root token; RunnerToken carries only
	// RunnerPolicy, without Vault's default policy.
	RootToken   secret.Value
	RunnerToken secret.Value
	// UnsealKey is the server's one unseal key share, hex-encoded, as the
	// server wrote it to the file unseal-key in Dir (mode 0600).
	UnsealKey secret.Value
}

// UnsealKeyFile is the file in the Vault's directory holding its unseal key.
const UnsealKeyFile = "unseal-key"

// StartVault starts the Vault server from bin in dir on 127.0.0.1:port with
// a fresh random root token, then creates the runner's policy and token.
// An error once the server has started comes with the server, to stop.
func StartVault(ctx context.Context, bin, dir string, port int) (*Vault, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start vault: %w", err)
	}
	// Vault refuses custom token IDs with a '.', so no "hvs." prefix.
	root, err := randomToken("lab-root-")
	if err != nil {
		return nil, fmt.Errorf("start vault: %w", err)
	}
	tokenFile := filepath.Join(dir, "root-token")
	if err := os.WriteFile(tokenFile, []byte(root.Reveal()+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("start vault: %w", err)
	}
	ready := filepath.Join(dir, "ready")
	_ = os.Remove(ready)
	keyFile := filepath.Join(dir, UnsealKeyFile)
	_ = os.Remove(keyFile)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	pid, err := daemon(bin, []string{"-addr", addr, "-root-token-file", tokenFile, "-ready-file", ready, "-unseal-key-file", keyFile},
		minimalEnv(), filepath.Join(dir, "vault.log"))
	if err != nil {
		return nil, fmt.Errorf("start vault: %w", err)
	}
	// From here on an error comes with the server, for the caller to stop.
	v := &Vault{Dir: dir, Addr: "http://" + addr, PID: pid, RootToken: root}
	if err := os.WriteFile(filepath.Join(dir, "vault.pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return v, fmt.Errorf("start vault: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := waitFile(wctx, ready, pid, "vault"); err != nil {
		return v, fmt.Errorf("start vault: %w%s", err, fileTail(filepath.Join(dir, "vault.log")))
	}
	// The server writes the key before it says it is ready.
	if v.UnsealKey, err = readSecret(keyFile); err != nil {
		return v, fmt.Errorf("start vault: %w", err)
	}
	if err := v.createRunnerToken(ctx); err != nil {
		return v, err
	}
	return v, nil
}

// Client returns a Vault API client for the server with token.
func (v *Vault) Client(token secret.Value) (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = 10 * time.Second
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	c.SetToken(token.Reveal())
	return c, nil
}

func (v *Vault) createRunnerToken(ctx context.Context) error {
	c, err := v.Client(v.RootToken)
	if err != nil {
		return err
	}
	if err := c.Sys().PutPolicyWithContext(ctx, RunnerPolicy, RunnerPolicyHCL); err != nil {
		return fmt.Errorf("write vault policy %s: %w", RunnerPolicy, err)
	}
	// No default policy: it is templated, so Vault parses it again on every
	// request, which was about half its CPU time per request when the runner
	// re-issues thousands of keys (internal/bench, BENCHMARKS.md).
	sec, err := c.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies:        []string{RunnerPolicy},
		NoDefaultPolicy: true,
		DisplayName:     "runbook-runner",
		TTL:             "768h",
		Renewable:       boolPtr(true),
	})
	if err != nil {
		return fmt.Errorf("create vault runner token: %w", err)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return fmt.Errorf("create vault runner token: no token in response")
	}
	v.RunnerToken = secret.New(sec.Auth.ClientToken)
	if err := os.WriteFile(filepath.Join(v.Dir, "runner-token"), []byte(sec.Auth.ClientToken+"\n"), 0o600); err != nil {
		return fmt.Errorf("save vault runner token: %w", err)
	}
	return nil
}

// PutKV writes fields at path under the KV v2 mount secret/ as root.
func (v *Vault) PutKV(ctx context.Context, path string, fields map[string]secret.Value) error {
	c, err := v.Client(v.RootToken)
	if err != nil {
		return err
	}
	data := make(map[string]any, len(fields))
	for k, val := range fields {
		data[k] = val.Reveal()
	}
	if _, err := c.KVv2("secret").Put(ctx, path, data); err != nil {
		return fmt.Errorf("write vault secret/%s: %w", path, err)
	}
	return nil
}

// loadVault reads a running server's tokens and unseal key back from dir.
// A server started before the lab kept its unseal key has none: it runs,
// and only Unseal refuses.
func loadVault(dir, addr string, pid int) (*Vault, error) {
	v := &Vault{Dir: dir, Addr: addr, PID: pid}
	for name, dst := range map[string]*secret.Value{"root-token": &v.RootToken, "runner-token": &v.RunnerToken, UnsealKeyFile: &v.UnsealKey} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) && name == UnsealKeyFile {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("load vault: %w", err)
		}
		*dst = secret.New(strings.TrimSpace(string(b)))
	}
	return v, nil
}

// Seal seals the server through Vault's API (sys/seal, as root): it then
// answers every request but sys/unseal, sys/seal-status and sys/health
// with 503 "Vault is sealed". Its in-memory storage stays; Unseal opens it
// again.
func (v *Vault) Seal(ctx context.Context) error {
	c, err := v.Client(v.RootToken)
	if err != nil {
		return fmt.Errorf("seal vault at %s: %w", v.Addr, err)
	}
	if err := c.Sys().SealWithContext(ctx); err != nil {
		return fmt.Errorf("seal vault at %s: %w", v.Addr, err)
	}
	st, err := c.Sys().SealStatusWithContext(ctx)
	if err != nil {
		return fmt.Errorf("seal vault at %s: seal status: %w", v.Addr, err)
	}
	if !st.Sealed {
		return fmt.Errorf("seal vault at %s: still unsealed", v.Addr)
	}
	return nil
}

// Unseal unseals the server with its unseal key (sys/unseal) and waits
// until it answers as the active node (sys/health: unsealed, not standby).
func (v *Vault) Unseal(ctx context.Context) error {
	if v.UnsealKey.IsZero() {
		return fmt.Errorf("unseal vault at %s: no unseal key", v.Addr)
	}
	c, err := v.Client(secret.Value{})
	if err != nil {
		return fmt.Errorf("unseal vault at %s: %w", v.Addr, err)
	}
	st, err := c.Sys().UnsealWithContext(ctx, v.UnsealKey.Reveal())
	if err != nil {
		// Vault's messages name no key; the error is Vault's answer.
		return fmt.Errorf("unseal vault at %s: %w", v.Addr, err)
	}
	if st.Sealed {
		return fmt.Errorf("unseal vault at %s: still sealed after the key (%d of %d shares)", v.Addr, st.Progress, st.T)
	}
	for {
		h, err := c.Sys().HealthWithContext(ctx)
		if err == nil && h.Initialized && !h.Sealed && !h.Standby {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("sealed %v, standby %v", h.Sealed, h.Standby)
			}
			return fmt.Errorf("unseal vault at %s: not active: %w (%w)", v.Addr, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop ends the server. Vault keeps everything in memory: it is gone.
func (v *Vault) Stop() error {
	if err := terminate(5*time.Second, v.PID); err != nil {
		return fmt.Errorf("stop vault: %w", err)
	}
	return nil
}

func randomToken(prefix string) (secret.Value, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return secret.Value{}, err
	}
	return secret.New(prefix + hex.EncodeToString(b[:])), nil
}

func boolPtr(b bool) *bool { return &b }

// minimalEnv is the environment for the lab's daemons: enough to run, and
// no proxy settings or credentials from the caller.
func minimalEnv() []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	if h := os.Getenv("HOME"); h != "" {
		env = append(env, "HOME="+h)
	}
	return env
}

// fileTail is the end of a log file, for error messages, as "\n" + text.
func fileTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	return "\n" + tail(b)
}
