package vault_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// noSecrets fails when err's text holds any of the values.
func noSecrets(t *testing.T, err error, vs ...secret.Value) {
	t.Helper()
	if err == nil {
		return
	}
	for _, v := range vs {
		if !v.IsZero() && strings.Contains(err.Error(), v.Reveal()) {
			t.Fatalf("error holds a secret: %v", err)
		}
	}
}

// TestAgainstVault runs the client against Vault's real server core.
func TestAgainstVault(t *testing.T) {
	l := labtest.Up(t, lab.Config{Vault: true})
	v := l.Vault

	t.Run("ReadWriteCAS", func(t *testing.T) { testReadWriteCAS(t, v) })
	t.Run("WriteAnyVersion", func(t *testing.T) { testWriteAnyVersion(t, v) })
	t.Run("KV1Refused", func(t *testing.T) { testKV1Refused(t, v) })
	t.Run("LeastPrivilege", func(t *testing.T) { testLeastPrivilege(t, v) })
	t.Run("AppRole", func(t *testing.T) { testAppRole(t, v) })
	t.Run("TokenSources", func(t *testing.T) { testTokenSources(t, v) })
	t.Run("ReadCurrent", func(t *testing.T) { testReadCurrent(t, v) })
	t.Run("Sealed", func(t *testing.T) { testSealed(t, v) })
}

// testSealed: once Vault is sealed, reads and writes fail with ErrSealed,
// and the error names the operation, the path, the server and that it is
// sealed; once unsealed, the same client works again.
func testSealed(t *testing.T, v *lab.Vault) {
	c := runner(t, v)
	ctx := ctx(t)
	p := "litellm/test/sealed"
	k := secret.New("sk-sealed-0123456789")
	if err := v.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.Unseal(context.Background()); err != nil {
			t.Error(err)
		}
	})
	_, werr := c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k}}, 0)
	_, rerr := c.Read(ctx, p)
	for _, err := range []error{werr, rerr} {
		if !errors.Is(err, vault.ErrSealed) {
			t.Fatalf("sealed Vault: %v, want ErrSealed", err)
		}
		noSecrets(t, err, k, v.RunnerToken, v.RootToken, v.UnsealKey)
	}
	want := "vault write secret/" + p + " at " + v.Addr + ": http 503: Vault is sealed"
	if werr.Error() != want {
		t.Errorf("write to the sealed Vault: %q, want %q", werr, want)
	}
	if err := v.Unseal(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k}}, 0); err != nil || n != 1 {
		t.Fatalf("write after the unseal: version %d, %v", n, err)
	}
}

func runner(t *testing.T, v *lab.Vault) *vault.Client {
	t.Helper()
	c, err := vault.New(ctx(t), vault.Config{Address: v.Addr, Token: v.RunnerToken})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// testWriteAnyVersion: a write without check-and-set makes a new version
// over any current one, and is refused with ErrCASRequired where the path
// requires check-and-set.
func testWriteAnyVersion(t *testing.T, v *lab.Vault) {
	c := runner(t, v)
	ctx := ctx(t)
	p := "litellm/test/any"
	k1, k2, k3 := secret.New("sk-any-one-0123456789"), secret.New("sk-any-two-0123456789"), secret.New("sk-any-three-0123456789")
	for i, k := range []secret.Value{k1, k2} {
		n, err := c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k}}, vault.AnyVersion)
		if err != nil || n != i+1 {
			t.Fatalf("write %d without check-and-set: version %d, %v", i+1, n, err)
		}
	}
	if e, err := c.Read(ctx, p); err != nil || e.Version != 2 || !e.Secret("key").Equal(k2) {
		t.Fatalf("read after two writes: %+v %v", e, err)
	}
	root, err := v.Client(v.RootToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "secret/metadata/"+p, map[string]any{"cas_required": true}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k3}}, vault.AnyVersion)
	if !errors.Is(err, vault.ErrCASRequired) {
		t.Fatalf("write without check-and-set where it is required: %v", err)
	}
	noSecrets(t, err, k1, k2, k3, v.RunnerToken)
	if n, err := c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k3}}, 2); err != nil || n != 3 {
		t.Fatalf("check-and-set write where it is required: version %d, %v", n, err)
	}
	if _, err := c.Write(ctx, p, vault.Data{}, -2); err == nil {
		t.Fatal("a check-and-set version of -2 was taken")
	}
}

func testReadWriteCAS(t *testing.T, v *lab.Vault) {
	c := runner(t, v)
	ctx := ctx(t)
	p := "litellm/test/cas"
	k1, k2 := secret.New("sk-first-0123456789"), secret.New("sk-second-0123456789")

	if _, err := c.Read(ctx, p); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("read of a new path: %v", err)
	}
	if _, err := c.Metadata(ctx, p); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("metadata of a new path: %v", err)
	}
	n, err := c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k1}, Plain: map[string]string{"run_id": "r1"}}, 0)
	if err != nil || n != 1 {
		t.Fatalf("first write: version %d, %v", n, err)
	}
	// cas=0 on an existing path: a concurrent creator is detected.
	_, err = c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k2}}, 0)
	var ce *vault.CASError
	if !errors.As(err, &ce) || ce.Expected != 0 || ce.Current != 1 || ce.Path != "secret/"+p {
		t.Fatalf("cas 0 on an existing path: %v", err)
	}
	noSecrets(t, err, k1, k2, v.RunnerToken)
	n, err = c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k2}, Plain: map[string]string{"run_id": "r2"}}, 1)
	if err != nil || n != 2 {
		t.Fatalf("second write: version %d, %v", n, err)
	}
	// A writer that read version 1 cannot overwrite version 2.
	_, err = c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": k1}}, 1)
	if !errors.As(err, &ce) || ce.Expected != 1 || ce.Current != 2 {
		t.Fatalf("stale cas: %v", err)
	}
	if !strings.Contains(err.Error(), "expected version 1, current is 2") {
		t.Errorf("cas error text: %v", err)
	}
	noSecrets(t, err, k1, k2, v.RunnerToken)

	e, err := c.Read(ctx, p, "run_id")
	if err != nil || e.Version != 2 || !e.Secret("key").Equal(k2) || e.Plain["run_id"] != "r2" {
		t.Fatalf("read latest: %+v %v", e, err)
	}
	if _, ok := e.Secrets["run_id"]; ok {
		t.Error("plain field returned as a secret")
	}
	for _, s := range []string{fmt.Sprint(e), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e)} {
		if strings.Contains(s, k2.Reveal()) {
			t.Fatalf("printed entry holds the key: %s", s)
		}
	}
	e, err = c.ReadVersion(ctx, p, 1)
	if err != nil || e.Version != 1 || !e.Secret("key").Equal(k1) {
		t.Fatalf("read version 1: %v", err)
	}
	if e.Secret("run_id").Reveal() != "r1" {
		t.Error("a field not named plain comes back as a secret")
	}
	if _, err := c.ReadVersion(ctx, p, 9); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("read a missing version: %v", err)
	}

	if err := c.WriteCustomMetadata(ctx, p, map[string]string{"rotated_by_run": "r2"}); err != nil {
		t.Fatal(err)
	}
	md, err := c.Metadata(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if md.CurrentVersion != 2 || len(md.Versions) != 2 || md.Versions[0].Version != 1 || md.Versions[0].Created.IsZero() ||
		md.Versions[0].Deleted() || md.CustomMetadata["rotated_by_run"] != "r2" {
		t.Fatalf("metadata: %+v", md)
	}

	// A deleted latest version reads as deleted, and shows in metadata.
	root, err := v.Client(v.RootToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().DeleteWithContext(ctx, "secret/data/"+p); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(ctx, p); !errors.Is(err, vault.ErrDeleted) {
		t.Fatalf("read a deleted version: %v", err)
	}
	md, err = c.Metadata(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := md.Version(2); !info.Deleted() {
		t.Fatalf("version 2 not marked deleted: %+v", info)
	}
	keys, err := c.List(ctx, "litellm/test")
	if err != nil || !contains(keys, "cas") {
		t.Fatalf("list: %v %v", keys, err)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func testKV1Refused(t *testing.T, v *lab.Vault) {
	root, err := v.Client(v.RootToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx(t), "sys/mounts/kv1", map[string]any{"type": "kv", "options": map[string]any{"version": "1"}}); err != nil {
		t.Fatal(err)
	}
	_, err = vault.New(ctx(t), vault.Config{Address: v.Addr, Token: v.RootToken, Mount: "kv1"})
	var me *vault.MountError
	if !errors.As(err, &me) || me.Mount != "kv1" {
		t.Fatalf("kv v1 mount: %v", err)
	}
	if !strings.Contains(err.Error(), "KV version 1") {
		t.Errorf("message: %v", err)
	}
	noSecrets(t, err, v.RootToken)
	if _, err := vault.New(ctx(t), vault.Config{Address: v.Addr, Token: v.RootToken, Mount: "nosuch"}); err == nil {
		t.Fatal("a missing mount was accepted")
	}
}

func testLeastPrivilege(t *testing.T, v *lab.Vault) {
	// The runner's token may read and write under litellm/ only, yet it
	// can tell the mount is KV v2.
	c := runner(t, v)
	ctx := ctx(t)
	_, err := c.Write(ctx, "other/thing", vault.Data{Secrets: map[string]secret.Value{"k": secret.New("value-123456")}}, 0)
	if !errors.Is(err, vault.ErrPermission) {
		t.Fatalf("write outside the policy: %v", err)
	}
	noSecrets(t, err, v.RunnerToken)
	if _, err := c.Write(ctx, "litellm/test/least", vault.Data{Secrets: map[string]secret.Value{"k": secret.New("value-123456")}}, 0); err != nil {
		t.Fatalf("write inside the policy: %v", err)
	}
	// A wrong token is refused at New, and the token is not in the error.
	bad := secret.New("hvs.not-a-real-token-0123456789")
	_, err = vault.New(ctx, vault.Config{Address: v.Addr, Token: bad})
	if !errors.Is(err, vault.ErrPermission) {
		t.Fatalf("bad token: %v", err)
	}
	noSecrets(t, err, bad)
}

func testAppRole(t *testing.T, v *lab.Vault) {
	ctx := ctx(t)
	root, err := v.Client(v.RootToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "sys/auth/approle", map[string]any{"type": "approle"}); err != nil {
		t.Fatalf("enable approle in the lab vault: %v", err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/runner", map[string]any{"token_policies": []string{lab.RunnerPolicy}}); err != nil {
		t.Fatal(err)
	}
	rs, err := root.Logical().ReadWithContext(ctx, "auth/approle/role/runner/role-id")
	if err != nil {
		t.Fatal(err)
	}
	ss, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/runner/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	roleID := secret.New(rs.Data["role_id"].(string))
	secretID := secret.New(ss.Data["secret_id"].(string))
	c, err := vault.New(ctx, vault.Config{Address: v.Addr, RoleID: roleID, SecretID: secretID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, "litellm/test/approle", vault.Data{Plain: map[string]string{"x": "1"}}, 0); err != nil {
		t.Fatalf("write after approle login: %v", err)
	}
	wrong := secret.New("00000000-0000-0000-0000-000000000000")
	_, err = vault.New(ctx, vault.Config{Address: v.Addr, RoleID: roleID, SecretID: wrong})
	if err == nil {
		t.Fatal("a wrong secret id logged in")
	}
	noSecrets(t, err, roleID, wrong, secretID)
}

func testTokenSources(t *testing.T, v *lab.Vault) {
	ctx := ctx(t)
	dir := t.TempDir()
	tf := dir + "/token"
	if err := writeFile(tf, v.RunnerToken.Reveal()+"\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := vault.New(ctx, vault.Config{Address: v.Addr, TokenFile: tf}); err != nil {
		t.Fatalf("token file: %v", err)
	}
	// From the inventory: address and token by reference, env and file.
	t.Setenv("RUNBOOK_TEST_VAULT_TOKEN", v.RunnerToken.Reveal())
	t.Setenv("VAULT_TOKEN", "hvs.ignored-because-the-inventory-says")
	resolve := func(ref inventory.SecretRef) (secret.Value, error) { return vault.ResolveSecretRef(ctx, ref, nil) }
	c, err := vault.FromInventory(ctx, inventory.Vault{Address: v.Addr, Token: inventory.SecretRef{Env: "RUNBOOK_TEST_VAULT_TOKEN"}}, resolve)
	if err != nil {
		t.Fatalf("from inventory (env): %v", err)
	}
	if _, err := vault.FromInventory(ctx, inventory.Vault{Address: v.Addr, Token: inventory.SecretRef{File: tf}}, resolve); err != nil {
		t.Fatalf("from inventory (file): %v", err)
	}
	// VAULT_ADDR and VAULT_TOKEN when the inventory is silent.
	t.Setenv("VAULT_ADDR", v.Addr)
	t.Setenv("VAULT_TOKEN", v.RunnerToken.Reveal())
	if _, err := vault.FromInventory(ctx, inventory.Vault{}, resolve); err != nil {
		t.Fatalf("from the environment: %v", err)
	}
	// A vault reference resolves through the client.
	if _, err := c.Write(ctx, "litellm/test/ref", vault.Data{Secrets: map[string]secret.Value{"pw": secret.New("db-password-1")}}, 0); err != nil {
		t.Fatal(err)
	}
	got, err := vault.ResolveSecretRef(ctx, inventory.SecretRef{Vault: "litellm/test/ref#pw"}, c)
	if err != nil || got.Reveal() != "db-password-1" {
		t.Fatalf("vault ref: %v", err)
	}
	if _, err := vault.ResolveSecretRef(ctx, inventory.SecretRef{Vault: "litellm/test/ref#nope"}, c); err == nil {
		t.Fatal("a missing field resolved")
	}
}

func testReadCurrent(t *testing.T, v *lab.Vault) {
	c := runner(t, v)
	ctx := ctx(t)
	p := "litellm/test/current"
	old, pending := secret.New("sk-old-000000000000"), secret.New("sk-pending-00000000")
	if _, err := c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": old}}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, p, vault.Data{Secrets: map[string]secret.Value{"key": pending}, Plain: map[string]string{
		vault.FieldState: vault.StatePending, vault.FieldPreviousVersion: "1", vault.FieldRunID: "r"}}, 1); err != nil {
		t.Fatal(err)
	}
	// A pending latest version is not current: the one before it is.
	e, err := c.ReadCurrent(ctx, p)
	if err != nil || e.Version != 1 || !e.Secret("key").Equal(old) {
		t.Fatalf("current while pending: %v", err)
	}
	if err := c.WriteCustomMetadata(ctx, p, map[string]string{vault.MetaCurrentVersion: "2"}); err != nil {
		t.Fatal(err)
	}
	e, err = c.ReadCurrent(ctx, p)
	if err != nil || e.Version != 2 || !e.Secret("key").Equal(pending) {
		t.Fatalf("current after promotion: %v", err)
	}
}

// TestAllowList proves the token never reaches an address off the list:
// the guard refuses before a connection is made, redirects included.
func TestAllowList(t *testing.T) {
	token := secret.New("hvs.guarded-token-0123456789")
	var hits atomic.Int32
	var leaked atomic.Bool
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Header.Get("X-Vault-Token") != "" {
			leaked.Store(true)
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	defer evil.Close()

	// An address off the list: refused before anything is sent.
	_, err := vault.New(ctx(t), vault.Config{Address: evil.URL, Token: token, AllowedAddresses: []string{"https://vault.example:8200"}})
	if !errors.Is(err, vault.ErrAddressNotAllowed) {
		t.Fatalf("unlisted address: %v", err)
	}
	noSecrets(t, err, token)

	// A listed server that redirects elsewhere: the redirect is not
	// followed to the unlisted address.
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, evil.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	_, err = vault.New(ctx(t), vault.Config{Address: redirector.URL, Token: token})
	if err == nil {
		t.Fatal("a redirect to an unlisted address succeeded")
	}
	noSecrets(t, err, token)
	if hits.Load() != 0 || leaked.Load() {
		t.Fatalf("the unlisted server got %d requests (token leaked: %v)", hits.Load(), leaked.Load())
	}

	// Plain http to a non-loopback address needs explicit listing. No
	// connection is attempted: the refusal comes first.
	_, err = vault.New(ctx(t), vault.Config{Address: "http://198.18.0.1:8200", Token: token})
	if !errors.Is(err, vault.ErrAddressNotAllowed) {
		t.Fatalf("plain http off loopback: %v", err)
	}
	for _, bad := range []string{"", "ftp://x", "https://user:pw@vault.example", "vault.example:8200"} {
		if _, err := vault.New(ctx(t), vault.Config{Address: bad, Token: token}); err == nil {
			t.Errorf("address %q accepted", bad)
		}
	}
	// Without credentials, New refuses before any request.
	if _, err := vault.New(ctx(t), vault.Config{Address: evil.URL}); err == nil || hits.Load() != 0 {
		t.Fatalf("no credentials: %v, %d requests", err, hits.Load())
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }
