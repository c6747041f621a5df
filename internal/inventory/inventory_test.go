package inventory

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/runbook/schema"
)

const repoRoot = "../.."

func load(t *testing.T, name string) *Inventory {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, name))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := Load(name, data)
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return inv
}

func names(hosts []*Host) []string {
	var out []string
	for _, h := range hosts {
		out = append(out, h.Name)
	}
	return out
}

func TestLoadStaging(t *testing.T) {
	inv := load(t, "testdata/valid/inventory/staging.yaml")
	dir := "testdata/valid/inventory"
	if inv.Environment != "staging" || !strings.HasPrefix(inv.Digest, "sha256:") || inv.File != dir+"/staging.yaml" {
		t.Errorf("header: %q %q %q", inv.Environment, inv.Digest, inv.File)
	}
	if !reflect.DeepEqual(inv.Vars, map[string]string{"litellm_unit": "litellm", "litellm_port": "4000"}) {
		t.Errorf("vars %v", inv.Vars)
	}
	if g := inv.Groups["gateways"]; g == nil || g.Vars["litellm_unit"] != "litellm-proxy" || g.Pos.Line != 5 {
		t.Errorf("gateways %+v", g)
	}
	if g := inv.Groups["canary"]; g == nil || len(g.Vars) != 0 {
		t.Errorf("canary %+v", g)
	}
	s := inv.SSH
	if s.KnownHosts != dir+"/known_hosts" || s.Identity != dir+"/id_ed25519" || s.Passphrase.Env != "SSH_KEY_PASSPHRASE" ||
		s.User != "root" || s.Port != 22 || s.ConnectTimeout != "5s" || s.CommandTimeout != "30s" || s.Keepalive != "10s" {
		t.Errorf("ssh %+v", s)
	}
	v := inv.Vault
	if v.Address != "http://127.0.0.1:8200" || v.Token.String() != "env:VAULT_TOKEN" || v.Mount != "secret" || v.Prefix != "litellm" ||
		!slices.Equal(v.AllowedAddresses, []string{"http://127.0.0.1:8200"}) || !v.RoleID.IsZero() {
		t.Errorf("vault %+v", v)
	}
	if inv.Database.URL.Env != "DATABASE_URL" {
		t.Errorf("database %+v", inv.Database)
	}
	if inv.Secrets["salt_key"].Vault != "litellm/salt#key" || inv.Secrets["webhook"].File != dir+"/webhook.token" {
		t.Errorf("secrets %+v", inv.Secrets)
	}
	if got := names(inv.Hosts); !slices.Equal(got, []string{"gw1", "gw2", "runner"}) {
		t.Fatalf("hosts %v", got)
	}
	gw1, gw2, runner := inv.Hosts[0], inv.Hosts[1], inv.Hosts[2]
	if gw1.Address != "198.18.0.2" || gw1.Port != 22 || gw1.User != "root" || gw1.Transport != "ssh" || gw1.Sudo ||
		!slices.Equal(gw1.Groups, []string{"gateways", "canary"}) || gw1.Pos.Line != 28 || gw1.Pos.Col != 3 {
		t.Errorf("gw1 %+v", gw1)
	}
	if gw2.Port != 2222 || gw2.User != "deploy" || !gw2.Sudo || gw2.Vars["litellm_unit"] != "litellm" {
		t.Errorf("gw2 %+v", gw2)
	}
	if runner.Transport != TransportLocal || runner.Address != "localhost" {
		t.Errorf("runner %+v", runner)
	}
}

func TestResolve(t *testing.T) {
	inv := load(t, "testdata/valid/inventory/staging.yaml")
	for _, c := range []struct {
		targets []string
		want    []string
	}{
		{[]string{"gateways"}, []string{"gw1", "gw2"}},
		{[]string{"canary", "gw1"}, []string{"gw1"}},
		{[]string{"runner", "gw1"}, []string{"gw1", "runner"}},
		{[]string{"all"}, []string{"gw1", "gw2", "runner"}},
		{[]string{"gw2", "gateways", "canary"}, []string{"gw1", "gw2"}},
		{nil, nil},
	} {
		got, err := inv.Resolve(c.targets)
		if err != nil || !slices.Equal(names(got), c.want) {
			t.Errorf("%v: got %v, %v; want %v", c.targets, names(got), err, c.want)
		}
	}
	if _, err := inv.Resolve([]string{"gw1", "gw9"}); err == nil || !strings.Contains(err.Error(), `"gw9"`) {
		t.Errorf("unknown target: %v", err)
	}
	if got := inv.Targets(); !slices.Equal(got, []string{"all", "canary", "gateways", "gw1", "gw2", "runner"}) {
		t.Errorf("targets %v", got)
	}
}

func TestHostVars(t *testing.T) {
	inv := load(t, "testdata/valid/inventory/staging.yaml")
	if got := inv.HostVars(inv.Host("gw1")); !reflect.DeepEqual(got, map[string]string{"litellm_unit": "litellm-proxy", "litellm_port": "4000"}) {
		t.Errorf("gw1 %v", got)
	}
	if got := inv.HostVars(inv.Host("gw2")); got["litellm_unit"] != "litellm" {
		t.Errorf("gw2 %v", got)
	}
	if got := inv.HostVars(inv.Host("runner")); got["litellm_unit"] != "litellm" {
		t.Errorf("runner %v", got)
	}
	// The merge never writes into the inventory's maps.
	inv.HostVars(inv.Host("gw1"))["x"] = "y"
	if _, ok := inv.Vars["x"]; ok {
		t.Error("HostVars shares the inventory's map")
	}
}

func TestJumpDefaults(t *testing.T) {
	inv := load(t, "testdata/valid/inventory/production.yaml")
	for name, want := range map[string]string{"bastion": "", "gw-a": "bastion", "gw-b": ""} {
		if got := inv.Host(name).Jump; got != want {
			t.Errorf("%s jump %q, want %q", name, got, want)
		}
	}
	if inv.Vault.RoleID.File != "/etc/runbook/role_id" || inv.Vault.SecretID.Env != "VAULT_SECRET_ID" {
		t.Errorf("approle %+v", inv.Vault)
	}
}

func TestLoadFile(t *testing.T) {
	inv, err := LoadFile(filepath.Join(repoRoot, "testdata/valid/inventory/staging.yaml"))
	if err != nil || inv.Environment != "staging" {
		t.Fatalf("%v %v", inv, err)
	}
	if inv.SSH.KnownHosts != filepath.Join(repoRoot, "testdata/valid/inventory/known_hosts") {
		t.Errorf("path not resolved against the file: %s", inv.SSH.KnownHosts)
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "none.yaml")); err == nil || !strings.HasPrefix(err.Error(), "read inventory: ") {
		t.Errorf("missing: %v", err)
	}
}

// TestSchemaKeysMatchDecoder keeps inventory.schema.json in step with the
// keys the decoder accepts, both ways.
func TestSchemaKeysMatchDecoder(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(schema.Inventory, &doc); err != nil {
		t.Fatal(err)
	}
	keysAt := func(v any) []string {
		var out []string
		for k := range v.(map[string]any)["properties"].(map[string]any) {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	props := doc["properties"].(map[string]any)
	defs := doc["$defs"].(map[string]any)
	group := props["groups"].(map[string]any)["additionalProperties"].(map[string]any)["oneOf"].([]any)[1]
	for what, c := range map[string]struct {
		schema any
		keys   []string
	}{
		"inventory": {doc, inventoryKeys},
		"group":     {group, groupKeys},
		"ssh":       {props["ssh"], sshKeys},
		"vault":     {props["vault"], vaultKeys},
		"database":  {props["database"], databaseKeys},
		"secretRef": {defs["secretRef"], secretRefKeys},
		"host":      {defs["host"], hostKeys},
	} {
		want := slices.Clone(c.keys)
		sort.Strings(want)
		if got := keysAt(c.schema); !slices.Equal(got, want) {
			t.Errorf("%s: schema has %v, decoder takes %v", what, got, want)
		}
	}
}
