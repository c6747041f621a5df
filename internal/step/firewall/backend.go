package firewall

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"

	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/transport/local"
	"github.com/runbook-dev/runbook/internal/transport/ssh"
)

// backend applies the rule model on one host.
type backend interface {
	// observe reports whether each rule exists (iptables -C), and the
	// server port of the runner's SSH connection to the host (0: none
	// known). It changes nothing.
	observe(ctx context.Context, rules []Rule) (exists []bool, sshPort int, err error)
	// ensure makes every set's rules present, each checked with -C before
	// it is inserted at the top of its chain, the DROP rule below its
	// ACCEPT exemptions. It returns how many rules it inserted.
	ensure(ctx context.Context, sets []ruleSet) (int, error)
	// list returns `iptables -S chain` of each family.
	list(ctx context.Context, families []string, chain string) (map[string]string, error)
	// remove deletes each rule that exists (checked with -C); it returns
	// how many it deleted.
	remove(ctx context.Context, rules []Rule) (int, error)
}

// backendFor picks the backend for a transport: go-iptables on the local
// transport when the runner is root, iptables commands through the
// transport otherwise.
func backendFor(tr transport.Transport, mask *secret.Masker) backend {
	if _, ok := tr.(*local.Transport); ok && os.Geteuid() == 0 {
		return &goBackend{host: tr.Host()}
	}
	return &cmdBackend{tr: tr, mask: mask}
}

// cmdBackend runs iptables argument lists through a transport, each
// operation's commands in one batch (one SSH session).
type cmdBackend struct {
	tr   transport.Transport
	mask *secret.Masker
}

func ipt(args []string) ssh.Cmd {
	return ssh.Cmd{Command: transport.Command{Args: args, Sudo: true}}
}

func (b *cmdBackend) fail(what string, args []string, r transport.Result) error {
	return fmt.Errorf("%s: %w", what, &transport.ExitError{Host: b.tr.Host(), Cmd: transport.Join(args), Code: r.ExitCode, Stderr: b.mask.MaskString(string(r.Stderr))})
}

// absent tells a -C that found no rule (exit 1 with iptables' "Bad rule")
// from a failure that also exits 1 (sudo refusing, for one).
func absent(r transport.Result) bool {
	return r.ExitCode == 1 && strings.Contains(string(r.Stderr), "does a matching rule exist")
}

func (b *cmdBackend) checked(r Rule, o ssh.Outcome) (bool, error) {
	switch {
	case o.ExitCode == 0:
		return true, nil
	case absent(o.Result):
		return false, nil
	}
	return false, b.fail("check rule", r.Args("-C"), o.Result)
}

func (b *cmdBackend) observe(ctx context.Context, rules []Rule) ([]bool, int, error) {
	cmds := []ssh.Cmd{{Command: transport.Command{Args: []string{"printenv", "SSH_CONNECTION"}}}}
	for _, r := range rules {
		cmds = append(cmds, ipt(r.Args("-C")))
	}
	out, err := ssh.RunBatch(ctx, b.tr, cmds)
	if err != nil {
		return nil, 0, fmt.Errorf("check rules: %w", err)
	}
	port := sshServerPort(string(out[0].Stdout))
	exists := make([]bool, len(rules))
	for i, r := range rules {
		if exists[i], err = b.checked(r, out[i+1]); err != nil {
			return nil, port, err
		}
	}
	return exists, port, nil
}

// ensure builds, per family, one batch:
//
//	1  -C DROP
//	   for each ACCEPT:  -C ACCEPT; -D ACCEPT (only if it exists and DROP did not)
//	   -I DROP 1 (unless 1)
//	   for each ACCEPT:  -C ACCEPT; -I ACCEPT 1 (unless that -C)
//
// so a DROP inserted under existing exemptions ends up below them.
func (b *cmdBackend) ensure(ctx context.Context, sets []ruleSet) (int, error) {
	var cmds []ssh.Cmd
	type ins struct {
		pos  int // 0-based index of the -I in cmds
		rule Rule
		op   string
	}
	var acts []ins
	add := func(c ssh.Cmd) int { cmds = append(cmds, c); return len(cmds) } // 1-based
	for _, s := range sets {
		cDrop := add(ipt(s.Drop.Args("-C")))
		for _, a := range s.Accepts {
			c := add(ipt(a.Args("-C")))
			d := ipt(a.Args("-D"))
			d.OnlyIf, d.Unless = c, cDrop
			acts = append(acts, ins{add(d) - 1, a, "-D"})
		}
		i := ipt(s.Drop.Args("-I", 1))
		i.Unless = cDrop
		acts = append(acts, ins{add(i) - 1, s.Drop, "-I"})
		for _, a := range s.Accepts {
			c := add(ipt(a.Args("-C")))
			i := ipt(a.Args("-I", 1))
			i.Unless = c
			acts = append(acts, ins{add(i) - 1, a, "-I"})
		}
	}
	out, err := ssh.RunBatch(ctx, b.tr, cmds)
	if err != nil {
		return 0, fmt.Errorf("insert rules: %w", err)
	}
	n := 0
	for _, a := range acts {
		o := out[a.pos]
		if o.Skipped {
			continue
		}
		if o.ExitCode != 0 {
			return n, b.fail("insert rule", cmds[a.pos].Args, o.Result)
		}
		if a.op == "-I" {
			n++
		}
	}
	// A -C that failed for another reason than a missing rule left its -I
	// to run; that -I's own result is reported above. Report the -C too.
	for i, c := range cmds {
		if len(c.Args) > 2 && c.Args[2] == "-C" && out[i].ExitCode != 0 && !out[i].Skipped && !absent(out[i].Result) {
			return n, b.fail("check rule", c.Args, out[i].Result)
		}
	}
	return n, nil
}

func (b *cmdBackend) list(ctx context.Context, families []string, chain string) (map[string]string, error) {
	var cmds []ssh.Cmd
	for _, f := range families {
		cmds = append(cmds, ipt([]string{binary(f), "-w", "-S", chain}))
	}
	out, err := ssh.RunBatch(ctx, b.tr, cmds)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	res := map[string]string{}
	for i, f := range families {
		if out[i].ExitCode != 0 {
			return nil, b.fail("list rules", cmds[i].Args, out[i].Result)
		}
		res[f] = string(out[i].Stdout)
	}
	return res, nil
}

func (b *cmdBackend) remove(ctx context.Context, rules []Rule) (int, error) {
	var cmds []ssh.Cmd
	for _, r := range rules {
		c := len(cmds) + 1
		cmds = append(cmds, ipt(r.Args("-C")))
		d := ipt(r.Args("-D"))
		d.OnlyIf = c
		cmds = append(cmds, d)
	}
	out, err := ssh.RunBatch(ctx, b.tr, cmds)
	if err != nil {
		return 0, fmt.Errorf("delete rules: %w", err)
	}
	n := 0
	for i, r := range rules {
		c, d := out[2*i], out[2*i+1]
		if _, err := b.checked(r, c); err != nil {
			return n, err
		}
		if d.Skipped {
			continue
		}
		if d.ExitCode != 0 {
			return n, b.fail("delete rule", r.Args("-D"), d.Result)
		}
		n++
	}
	return n, nil
}

// goBackend uses github.com/coreos/go-iptables on this machine.
type goBackend struct {
	host string
}

var (
	iptOnce [2]sync.Once
	ipts    [2]*iptables.IPTables
	iptErr  [2]error
)

func (b *goBackend) ipt(family string) (*iptables.IPTables, error) {
	i, proto := 0, iptables.ProtocolIPv4
	if family == IPv6 {
		i, proto = 1, iptables.ProtocolIPv6
	}
	iptOnce[i].Do(func() { ipts[i], iptErr[i] = iptables.New(iptables.IPFamily(proto)) })
	if iptErr[i] != nil {
		return nil, fmt.Errorf("%s on %s: %w", binary(family), b.host, iptErr[i])
	}
	return ipts[i], nil
}

func (b *goBackend) exists(r Rule) (bool, error) {
	t, err := b.ipt(r.Family)
	if err != nil {
		return false, err
	}
	ok, err := t.Exists("filter", r.Chain, r.Spec...)
	if err != nil {
		return false, fmt.Errorf("check rule on %s: %w", b.host, err)
	}
	return ok, nil
}

func (b *goBackend) observe(ctx context.Context, rules []Rule) ([]bool, int, error) {
	exists := make([]bool, len(rules))
	for i, r := range rules {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		var err error
		if exists[i], err = b.exists(r); err != nil {
			return nil, 0, err
		}
	}
	return exists, sshServerPort(os.Getenv("SSH_CONNECTION")), nil
}

func (b *goBackend) op(r Rule, op string) error {
	t, err := b.ipt(r.Family)
	if err != nil {
		return err
	}
	switch op {
	case "-I":
		err = t.Insert("filter", r.Chain, 1, r.Spec...)
	case "-D":
		err = t.Delete("filter", r.Chain, r.Spec...)
	}
	if err != nil {
		return fmt.Errorf("%s rule on %s: %w", map[string]string{"-I": "insert", "-D": "delete"}[op], b.host, err)
	}
	return nil
}

func (b *goBackend) ensure(ctx context.Context, sets []ruleSet) (int, error) {
	n := 0
	for _, s := range sets {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		dropThere, err := b.exists(s.Drop)
		if err != nil {
			return n, err
		}
		if !dropThere {
			for _, a := range s.Accepts {
				there, err := b.exists(a)
				if err != nil {
					return n, err
				}
				if there {
					if err := b.op(a, "-D"); err != nil {
						return n, err
					}
				}
			}
			if err := b.op(s.Drop, "-I"); err != nil {
				return n, err
			}
			n++
		}
		for _, a := range s.Accepts {
			there, err := b.exists(a)
			if err != nil {
				return n, err
			}
			if !there {
				if err := b.op(a, "-I"); err != nil {
					return n, err
				}
				n++
			}
		}
	}
	return n, nil
}

func (b *goBackend) list(ctx context.Context, families []string, chain string) (map[string]string, error) {
	res := map[string]string{}
	for _, f := range families {
		t, err := b.ipt(f)
		if err != nil {
			return nil, err
		}
		lines, err := t.List("filter", chain)
		if err != nil {
			return nil, fmt.Errorf("list rules on %s: %w", b.host, err)
		}
		res[f] = strings.Join(lines, "\n")
	}
	return res, nil
}

func (b *goBackend) remove(ctx context.Context, rules []Rule) (int, error) {
	n := 0
	for _, r := range rules {
		there, err := b.exists(r)
		if err != nil {
			return n, err
		}
		if !there {
			continue
		}
		if err := b.op(r, "-D"); err != nil {
			var ie *iptables.Error
			if errors.As(err, &ie) && ie.IsNotExist() {
				continue
			}
			return n, err
		}
		n++
	}
	return n, nil
}
