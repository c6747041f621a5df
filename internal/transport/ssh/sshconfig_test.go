package ssh_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/transport"
	rbssh "github.com/runbook-dev/runbook/internal/transport/ssh"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSSHConfigLookup(t *testing.T) {
	p := writeConfig(t, `# operators' config
User ops

Host gw1 gw2
  HostName 198.18.0.2
  Port=2222
  ProxyJump bastion

Host gw* !gw9
  HostName "198.18.0.99"
  User deploy
  Port 22
  StrictHostKeyChecking no

Match host gw3
  User matched

Host gw3
  ProxyJump none

Host *
  Port 2200
`)
	cases := []struct {
		name, host, user string
		port             int
		jump             string
	}{
		// First value wins: the top-level User comes before every block.
		{"gw1", "198.18.0.2", "ops", 2222, "bastion"},
		{"gw3", "198.18.0.99", "ops", 22, "none"},
		// Negated: gw9 is not in the gw* block.
		{"gw9", "", "ops", 2200, ""},
		{"db1", "", "ops", 2200, ""},
	}
	for _, c := range cases {
		h, u, port, j, err := rbssh.ConfigLookupForTest(p, c.name)
		if err != nil {
			t.Fatal(err)
		}
		if h != c.host || u != c.user || port != c.port || j != c.jump {
			t.Errorf("%s: got %q %q %d %q, want %q %q %d %q", c.name, h, u, port, j, c.host, c.user, c.port, c.jump)
		}
	}
}

// Values that are not plain host names, users, ports or one jump are
// refused with the file and line: nothing from them reaches a connection.
func TestSSHConfigHostileValues(t *testing.T) {
	for _, bad := range []string{
		"HostName gw;touch /tmp/x",
		"HostName -oProxyCommand=sh",
		"User $(id)",
		"User root\x00x",
		"Port 0",
		"Port 22;id",
		"ProxyJump a,b",
		"ProxyJump -J x",
		"ProxyJump 'x y'",
	} {
		p := writeConfig(t, "Host gw1\n  "+bad+"\n")
		_, _, _, _, err := rbssh.ConfigLookupForTest(p, "gw1")
		if err == nil || !strings.Contains(err.Error(), p+":2:") {
			t.Errorf("%q: got %v, want an error at %s:2", bad, err, p)
		}
	}
}

// A host known to the inventory by name only reaches its sshd through
// ssh_config's HostName and Port; the inventory's own settings win over it.
func TestSSHConfigDial(t *testing.T) {
	s := startSSHD(t)
	cfg := baseConfig(s)
	cfg.SSHConfig = writeConfig(t, "Host gw-named\n  HostName 127.0.0.1\n  Port "+strconv.Itoa(s.Port)+"\n  User nosuchuser\n")
	d := dialer(t, cfg)
	ctx := context.Background()
	// The inventory says root; ssh_config's user is not used.
	tr, err := d.DialSSH(ctx, &inventory.Host{Name: "gw-named", User: "root"})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Address() != "127.0.0.1:"+strconv.Itoa(s.Port) || tr.User() != "root" {
		t.Errorf("dialed %s as %s", tr.Address(), tr.User())
	}
	if res, err := tr.Run(ctx, transport.Command{Args: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %v %+v", err, res)
	}
	// Without the inventory's user, ssh_config's applies (and is refused).
	if _, err := d.DialSSH(ctx, &inventory.Host{Name: "gw-named"}); err == nil || !strings.Contains(err.Error(), "gw-named") {
		t.Errorf("dial as ssh_config's user: %v, want a refusal naming the host", err)
	}
	// A jump host named in ProxyJump, resolved through ssh_config too.
	cfg.SSHConfig = writeConfig(t, "Host gw-far\n  HostName 127.0.0.1\n  Port "+strconv.Itoa(s.Port)+"\n  ProxyJump bastion\nHost bastion\n  HostName 127.0.0.1\n  Port "+strconv.Itoa(s.Port)+"\n")
	d2 := dialer(t, cfg)
	tr2, err := d2.DialSSH(ctx, &inventory.Host{Name: "gw-far", User: "root"})
	if err != nil {
		t.Fatal(err)
	}
	defer tr2.Close()
	res, err := tr2.Run(ctx, transport.Command{Args: []string{"sh", "-c", `printf %s "${SSH_CONNECTION%% *}"`}})
	if err != nil || string(res.Stdout) != "127.0.0.1" {
		t.Fatalf("through the jump: %v %q", err, res.Stdout)
	}
	if j := rbssh.JumpsForTest(d2); len(j) != 1 || j[0] != "bastion" {
		t.Errorf("jump connections %q, want [bastion]", j)
	}
}
