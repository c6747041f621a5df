package firewall

import (
	"context"
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

// op is one iptables operation of a program the kinds build: -S lists a
// chain, -C checks a rule, -I inserts it at position 1, -D deletes it.
// OnlyIf and Unless (1-based positions of earlier ops) make an op run only
// when that op succeeded, or only when it did not; as in ssh.Cmd.
type op struct {
	Op     string
	Rule   Rule // for -S, Family and Chain
	OnlyIf int
	Unless int
}

func (o op) args() []string {
	if o.Op == "-S" {
		return []string{binary(o.Rule.Family), "-w", "-S", o.Rule.Chain}
	}
	if o.Op == "-I" {
		return o.Rule.Args("-I", 1)
	}
	return o.Rule.Args(o.Op)
}

// opResult is what became of an op.
type opResult struct {
	Ran bool
	// OK is success: for -C, the rule exists.
	OK bool
	// Out is the listing of -S.
	Out string
}

// backend runs programs of ops on one host.
type backend interface {
	// exec runs ops in order and, with sshPort, also reports the server
	// port of the runner's SSH connection to the host (0: none known). A
	// -C that finds no rule is not an error; any other failure is, and
	// stops the program there.
	exec(ctx context.Context, ops []op, sshPort bool) ([]opResult, int, error)
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

// cmdBackend runs a program as one batch through the transport: one SSH
// session, whatever its length.
type cmdBackend struct {
	tr   transport.Transport
	mask *secret.Masker
}

// absent tells a -C that found no rule (exit 1 with iptables' "Bad rule")
// from a failure that also exits 1 (sudo refusing, for one).
func absent(r transport.Result) bool {
	return r.ExitCode == 1 && strings.Contains(string(r.Stderr), "does a matching rule exist")
}

func (b *cmdBackend) exec(ctx context.Context, ops []op, sshPort bool) ([]opResult, int, error) {
	var cmds []ssh.Cmd
	shift := 0
	if sshPort {
		cmds = append(cmds, ssh.Cmd{Command: transport.Command{Args: []string{"printenv", "SSH_CONNECTION"}}})
		shift = 1
	}
	for _, o := range ops {
		c := ssh.Cmd{Command: transport.Command{Args: o.args(), Sudo: true}}
		if o.OnlyIf > 0 {
			c.OnlyIf = o.OnlyIf + shift
		}
		if o.Unless > 0 {
			c.Unless = o.Unless + shift
		}
		cmds = append(cmds, c)
	}
	out, err := ssh.RunBatch(ctx, b.tr, cmds)
	if err != nil {
		return nil, 0, fmt.Errorf("iptables: %w", err)
	}
	port := 0
	if sshPort {
		port = sshServerPort(string(out[0].Stdout))
		out = out[1:]
	}
	res := make([]opResult, len(ops))
	for i, o := range ops {
		r := out[i]
		if r.Skipped {
			continue
		}
		res[i].Ran = true
		switch {
		case r.ExitCode == 0:
			res[i].OK = true
			res[i].Out = string(r.Stdout)
		case o.Op == "-C" && absent(r.Result):
		default:
			return res, port, &transport.ExitError{Host: b.tr.Host(), Cmd: transport.Join(o.args()), Code: r.ExitCode, Stderr: b.mask.MaskString(string(r.Stderr))}
		}
	}
	return res, port, nil
}

// goBackend runs a program through github.com/coreos/go-iptables on this
// machine.
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

func (b *goBackend) exec(ctx context.Context, ops []op, sshPort bool) ([]opResult, int, error) {
	port := 0
	if sshPort {
		port = sshServerPort(os.Getenv("SSH_CONNECTION"))
	}
	res := make([]opResult, len(ops))
	for i, o := range ops {
		if o.OnlyIf > 0 && !res[o.OnlyIf-1].OK || o.Unless > 0 && res[o.Unless-1].OK {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, port, err
		}
		t, err := b.ipt(o.Rule.Family)
		if err != nil {
			return res, port, err
		}
		res[i].Ran = true
		switch o.Op {
		case "-S":
			var lines []string
			lines, err = t.List("filter", o.Rule.Chain)
			res[i].Out = strings.Join(lines, "\n")
		case "-C":
			res[i].OK, err = t.Exists("filter", o.Rule.Chain, o.Rule.Spec...)
			if err != nil {
				return res, port, fmt.Errorf("%s on %s: %w", transport.Join(o.args()), b.host, err)
			}
			continue
		case "-I":
			err = t.Insert("filter", o.Rule.Chain, 1, o.Rule.Spec...)
		case "-D":
			err = t.Delete("filter", o.Rule.Chain, o.Rule.Spec...)
		default:
			err = fmt.Errorf("unknown operation %s", o.Op)
		}
		if err != nil {
			return res, port, fmt.Errorf("%s on %s: %w", transport.Join(o.args()), b.host, err)
		}
		res[i].OK = true
	}
	return res, port, nil
}
