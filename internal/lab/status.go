package lab

import (
	"context"
	"net"
	"strconv"
	"strings"
	"time"
)

// Status is what runs in a lab.
type Status struct {
	Gateways []GatewayStatus
	Nginx    bool
	Postgres bool
	Vault    bool

	want struct{ nginx, postgres, vault bool }
}

// GatewayStatus is one gateway host's state.
type GatewayStatus struct {
	Name, Address, Namespace, User string
	SSHD                           bool
	// LiteLLM is what the host's systemctl says: active, inactive, failed.
	LiteLLM string
}

// Healthy reports whether everything the lab started still runs.
func (s *Status) Healthy() bool {
	for _, g := range s.Gateways {
		if !g.SSHD || (s.want.postgres && g.LiteLLM != "active") {
			return false
		}
	}
	return (!s.want.nginx || s.Nginx) && (!s.want.postgres || s.Postgres) && (!s.want.vault || s.Vault)
}

// Status looks at every part of the lab.
func (l *Lab) Status(ctx context.Context) *Status {
	s := &Status{}
	s.want.nginx, s.want.postgres, s.want.vault = l.Nginx != nil, l.Postgres != nil, l.Vault != nil
	s.Gateways = make([]GatewayStatus, len(l.Gateways))
	parallel(len(l.Gateways), func(i int) error {
		g := l.Gateways[i]
		gs := GatewayStatus{Name: g.Name, Address: g.Address, Namespace: g.Namespace, User: g.User}
		gs.SSHD = runs(g.SSHDPID, "sshd") && listensOn(g.SSHDPID, 22)
		gs.LiteLLM = "unknown"
		if gs.SSHD {
			out, _ := systemctlInGateway(ctx, g, "is-active", "litellm")
			if f := strings.Fields(string(out)); len(f) > 0 {
				gs.LiteLLM = f[0]
			}
		}
		s.Gateways[i] = gs
		return nil
	})
	dial := func(addr string) bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	if l.Nginx != nil {
		s.Nginx = l.Nginx.Running()
	}
	if l.Postgres != nil {
		s.Postgres = alive(postmasterPID(l.Postgres.Dir)) && dial("127.0.0.1:"+strconv.Itoa(l.Postgres.Port))
	}
	if l.Vault != nil {
		s.Vault = alive(l.Vault.PID) && dial(strings.TrimPrefix(l.Vault.Addr, "http://"))
	}
	return s
}
