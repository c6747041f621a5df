package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// q quotes s as a YAML (and JSON) double-quoted scalar.
func q(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// writeInventory writes the runner's inventory for the lab: every gateway
// in the group gateways, the SSH identity and known_hosts, Vault and the
// database, with secrets referenced from the environment (see the env
// file), never inline.
func (l *Lab) writeInventory() error {
	var b strings.Builder
	b.WriteString("# runbook lab inventory, written by the lab. Source the env file beside it\n")
	b.WriteString("# for VAULT_ADDR, VAULT_TOKEN and DATABASE_URL.\n")
	b.WriteString("environment: lab\n")
	b.WriteString("vars:\n  litellm_unit: litellm\n  litellm_port: \"4000\"\n")
	b.WriteString("  litellm_config: /etc/litellm/config.yaml\n  litellm_env_file: /etc/litellm/litellm.env\n")
	b.WriteString("groups:\n  gateways:\n")
	if len(l.Gateways) > 0 {
		b.WriteString("ssh:\n")
		fmt.Fprintf(&b, "  known_hosts: %s\n", q(l.KnownHosts))
		fmt.Fprintf(&b, "  identity: %s\n", q(l.ClientKey))
		b.WriteString("  user: root\n  connect_timeout: 5s\n  command_timeout: 60s\n")
	}
	if l.Vault != nil {
		b.WriteString("vault:\n")
		fmt.Fprintf(&b, "  address: %s\n", q(l.Vault.Addr))
		b.WriteString("  token: {env: VAULT_TOKEN}\n")
		fmt.Fprintf(&b, "  allowed_addresses: [%s]\n", q(l.Vault.Addr))
		b.WriteString("  mount: secret\n  prefix: litellm\n")
	}
	if l.Postgres != nil {
		b.WriteString("database:\n  url: {env: DATABASE_URL}\n")
	}
	if len(l.Gateways) > 0 {
		b.WriteString("hosts:\n")
		for _, g := range l.Gateways {
			fmt.Fprintf(&b, "  %s:\n", g.Name)
			fmt.Fprintf(&b, "    address: %s\n", q(g.Address))
			fmt.Fprintf(&b, "    port: %d\n", g.SSHPort)
			fmt.Fprintf(&b, "    user: %s\n", g.User)
			if g.Sudo {
				b.WriteString("    sudo: true\n")
			}
			b.WriteString("    groups: [gateways]\n")
			fmt.Fprintf(&b, "    vars: {litellm_url: %s}\n", q(g.URL()))
		}
	}
	return os.WriteFile(l.InventoryPath, []byte(b.String()), 0o644)
}

// EnvLines are the lines to source for the runner: the Vault address and
// the runner's (least-privilege) token, the database URL, the inventory
// and the lab's directory (which runbook-lab drain and undrain read, so
// that a runbook's drain commands need not name it).
func (l *Lab) EnvLines() []string {
	var lines []string
	if l.Vault != nil {
		lines = append(lines,
			"export VAULT_ADDR="+shq(l.Vault.Addr),
			"export VAULT_TOKEN="+shq(l.Vault.RunnerToken.Reveal()))
	}
	if l.DatabaseURL != "" {
		lines = append(lines, "export DATABASE_URL="+shq(l.DatabaseURL))
	}
	lines = append(lines, "export RUNBOOK_LAB_INVENTORY="+shq(l.InventoryPath),
		"export RUNBOOK_LAB_DIR="+shq(l.Dir))
	return lines
}

// writeEnv writes the env file (0600: it holds the runner's Vault token).
func (l *Lab) writeEnv() error {
	text := "# runbook lab environment: source this file.\n" + strings.Join(l.EnvLines(), "\n") + "\n"
	f, err := os.OpenFile(l.EnvPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
