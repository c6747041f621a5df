package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

// runKeys runs the command line with keys registered, as root.go does.
func runKeys(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	g := &globals{stdin: strings.NewReader(""), stdout: &out, stderr: &errb}
	root := newRootCommand(g)
	if c, _, err := root.Find([]string{"keys"}); err != nil || c == root {
		root.AddCommand(newKeysCommand(g))
	}
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	if err != nil {
		printError(&errb, err)
	}
	return out.String(), errb.String(), exitCode(err)
}

func gatewayStatus(t *testing.T, url string, key secret.Value) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+key.Reveal())
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestKeysIssue issues a client key on the lab: a gateway in a network
// namespace, PostgreSQL, and Vault with the runner's least-privilege token.
func TestKeysIssue(t *testing.T) {
	l := labtest.Up(t, lab.Config{Gateways: 1, Postgres: true, Vault: true, Keys: 3})
	t.Setenv("VAULT_TOKEN", l.Vault.RunnerToken.Reveal())
	t.Setenv("VAULT_ADDR", "")
	ctx := context.Background()
	vc, err := vault.New(ctx, vault.Config{Address: l.Vault.Addr, Token: l.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	gw := l.Gateways[0]

	// Plain http off loopback needs --allow-http: the master key would
	// cross the network in clear.
	_, errOut, code := runKeys(t, "-i", l.InventoryPath, "keys", "issue", "svc-a", "--host", gw.Name)
	if code != ExitUsage || !strings.Contains(errOut, "--allow-http") {
		t.Fatalf("http gateway without --allow-http: %d %s", code, errOut)
	}

	out, errOut, code := runKeys(t, "-i", l.InventoryPath, "keys", "issue", "svc-a", "--host", gw.Name, "--allow-http", "--duration", "90d")
	if code != 0 {
		t.Fatalf("issue: %d %s", code, errOut)
	}
	e, err := vc.ReadCurrent(ctx, "litellm/clients/svc-a", "alias", "token_hash")
	if err != nil {
		t.Fatal(err)
	}
	key := e.Secret("key")
	if !strings.Contains(out, key.Fingerprint()) || strings.Contains(out+errOut, key.Reveal()) || strings.Contains(out+errOut, l.MasterKey.Reveal()) {
		t.Fatalf("output must show the fingerprint and no key:\n%s%s", out, errOut)
	}
	if e.Plain["alias"] != "svc-a" || e.Plain["token_hash"] != litellm.HashToken(key.Reveal()) {
		t.Fatalf("vault data %v", e.Plain)
	}
	if got := gatewayStatus(t, gw.URL(), key); got != 200 {
		t.Fatalf("the issued key at the gateway: %d", got)
	}

	// The alias has a live key: a second issue changes nothing.
	_, errOut, code = runKeys(t, "-i", l.InventoryPath, "keys", "issue", "svc-a", "--host", gw.Name, "--allow-http")
	if code != ExitUsage || !strings.Contains(errOut, "live key") {
		t.Fatalf("second issue: %d %s", code, errOut)
	}
	if md, _ := vc.Metadata(ctx, "litellm/clients/svc-a"); md.CurrentVersion != 1 {
		t.Fatalf("a refused issue wrote version %d", md.CurrentVersion)
	}

	// --show prints the key; JSON output names fields one by one.
	out, errOut, code = runKeys(t, "-i", l.InventoryPath, "-o", "json", "keys", "issue", "svc-b", "--gateway", gw.URL(), "--allow-http", "--show")
	if code != 0 {
		t.Fatalf("issue --show: %d %s", code, errOut)
	}
	var res issued
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(res.Key, "sk-") || res.Fingerprint != secret.Fingerprint(res.Key) || res.VaultPath != "secret/litellm/clients/svc-b" || res.Expires == "" {
		t.Fatalf("json %+v", res)
	}
	if strings.Contains(out, l.MasterKey.Reveal()) {
		t.Fatal("the master key was printed")
	}

	// A gateway that refuses: the pending key stays in Vault and the next
	// issue reuses it instead of making another.
	_, errOut, code = runKeys(t, "-i", l.InventoryPath, "keys", "issue", "svc-c", "--gateway", gw.URL(), "--allow-http", "--duration", "7x")
	if code != ExitUsage {
		t.Fatalf("bad duration: %d %s", code, errOut)
	}
	_, errOut, code = runKeys(t, "-i", l.InventoryPath, "keys", "issue", "svc-c", "--gateway", "http://127.0.0.1:1", "--timeout", "2s")
	if code == 0 || !strings.Contains(errOut, "pending") {
		t.Fatalf("unreachable gateway: %d %s", code, errOut)
	}
	pending, err := vc.Read(ctx, "litellm/clients/svc-c", vault.PlainFields...)
	if err != nil || pending.Plain[vault.FieldState] != vault.StatePending {
		t.Fatalf("pending key: %v", err)
	}
	out, errOut, code = runKeys(t, "-i", l.InventoryPath, "keys", "issue", "svc-c", "--gateway", gw.URL(), "--allow-http")
	if code != 0 || !strings.Contains(out, pending.Secret("key").Fingerprint()) {
		t.Fatalf("retry: %d %s%s", code, out, errOut)
	}
	if md, _ := vc.Metadata(ctx, "litellm/clients/svc-c"); md.CurrentVersion != 1 || md.CustomMetadata[vault.MetaCurrentVersion] != "1" {
		t.Fatalf("retry wrote another version: %+v", md)
	}
	if got := gatewayStatus(t, gw.URL(), pending.Secret("key")); got != 200 {
		t.Fatalf("the retried key at the gateway: %d", got)
	}
}
