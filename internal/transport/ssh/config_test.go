package ssh_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/inventory"
	rbssh "github.com/runbook-dev/runbook/internal/transport/ssh"
)

func TestConfigFrom(t *testing.T) {
	home, _ := os.UserHomeDir()
	c, err := rbssh.ConfigFrom(inventory.SSH{KnownHosts: "~/.ssh/kh", Identity: "/k", User: "ops", Port: 2222,
		Jump: "bastion", ConnectTimeout: "3s", CommandTimeout: "2m", Keepalive: "10s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.KnownHosts != filepath.Join(home, ".ssh/kh") || c.Identity != "/k" || c.User != "ops" || c.Port != 2222 ||
		c.Jump != "bastion" || c.ConnectTimeout != 3*time.Second || c.CommandTimeout != 2*time.Minute ||
		c.Keepalive != 10*time.Second || !c.Agent {
		t.Errorf("%+v", c)
	}
	if _, err := rbssh.ConfigFrom(inventory.SSH{ConnectTimeout: "soon"}); err == nil {
		t.Error("a bad duration was accepted")
	}
	inv := &inventory.Inventory{Hosts: []*inventory.Host{{Name: "a"}, {Name: "bastion", Address: "198.18.0.9"}}}
	if h := rbssh.LookupIn(inv)("bastion"); h == nil || h.Address != "198.18.0.9" {
		t.Errorf("lookup: %+v", h)
	}
	if rbssh.LookupIn(inv)("nope") != nil {
		t.Error("lookup of an unknown host")
	}
}
