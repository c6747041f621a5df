package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport"
)

// DropSpec is the `firewall.drop` kind.
var DropSpec = &step.Spec{
	Name:    "firewall.drop",
	Summary: "drop traffic to a port with iptables/ip6tables rules at the top of a chain",
	Target:  step.PerHost,
	Params: []step.Param{
		{Name: "port", Type: step.String, Required: true, Validate: validatePort,
			Doc: "the port to close, or a range low:high"},
		{Name: "protocol", Type: step.String, Default: "tcp", Allowed: []string{"tcp", "udp"}, Doc: "the protocol of the traffic to drop"},
		{Name: "chain", Type: step.String, Default: "INPUT", Validate: validateChain,
			Doc: "the filter table's chain; rules go in at position 1"},
		{Name: "families", Type: step.List, Default: []string{IPv4, IPv6}, Allowed: []string{IPv4, IPv6},
			Doc: "ipv4 (iptables), ipv6 (ip6tables) or both"},
		{Name: "exempt_sources", Type: step.List, Default: []string{}, Validate: validateSources,
			Doc: "addresses or CIDR prefixes (the admin network) still allowed to reach the port"},
		{Name: "tag", Type: step.String, Validate: validateTag,
			Doc: "names the rules in their comment runbook:RUN:TAG (default: the step id); firewall.lift finds them by it"},
	},
	Outputs: []string{"comment", "rules"},
	New:     newDrop,
}

func validatePort(v any) error {
	s, _ := v.(string)
	_, err := ParsePortRange(s)
	return err
}

func validateChain(v any) error {
	s, _ := v.(string)
	return ValidateChain(s)
}

func validateTag(v any) error {
	s, _ := v.(string)
	return ValidateTag("tag", s)
}

func validateSources(v any) error {
	s, _ := v.([]string)
	_, err := ParseSources(s)
	return err
}

// Drop inserts the DROP rule (and its exemptions) in every family.
type Drop struct {
	Ports    PortRange
	Protocol string
	Chain    string
	Families []string
	Sources  []netip.Prefix
	Tag      string // "" means the step id

	sshPort int               // seen by Check
	found   map[string]string // by Check: wanted rule -> the comment it exists under
}

var _ step.Step = (*Drop)(nil)

// common parameters of drop and lift.
func chainAndFamilies(p step.Params) (string, []string, error) {
	chain := p.String("chain")
	if !p.Has("chain") {
		chain = "INPUT"
	}
	if err := ValidateChain(chain); err != nil {
		return "", nil, &step.ParamError{Param: "chain", Err: err}
	}
	fams := p.Strings("families")
	if !p.Has("families") {
		fams = []string{IPv4, IPv6}
	}
	if len(fams) == 0 {
		return "", nil, &step.ParamError{Param: "families", Err: errors.New("empty list")}
	}
	var out []string
	for _, want := range []string{IPv4, IPv6} {
		for _, f := range fams {
			if f == want {
				out = append(out, want)
				break
			}
		}
	}
	for _, f := range fams {
		if f != IPv4 && f != IPv6 {
			return "", nil, &step.ParamError{Param: "families", Err: fmt.Errorf("%q is not ipv4 or ipv6", f)}
		}
	}
	return chain, out, nil
}

func newDrop(p step.Params) (step.Step, error) {
	d := &Drop{Protocol: p.String("protocol"), Tag: p.String("tag")}
	var err error
	if d.Ports, err = ParsePortRange(p.String("port")); err != nil {
		return nil, &step.ParamError{Param: "port", Err: err}
	}
	if d.Protocol == "" {
		d.Protocol = "tcp"
	}
	if d.Protocol != "tcp" && d.Protocol != "udp" {
		return nil, &step.ParamError{Param: "protocol", Err: fmt.Errorf("%q is not tcp or udp", d.Protocol)}
	}
	if d.Chain, d.Families, err = chainAndFamilies(p); err != nil {
		return nil, err
	}
	if d.Sources, err = ParseSources(p.Strings("exempt_sources")); err != nil {
		return nil, &step.ParamError{Param: "exempt_sources", Err: err}
	}
	if d.Tag != "" {
		if err := ValidateTag("tag", d.Tag); err != nil {
			return nil, &step.ParamError{Param: "tag", Err: err}
		}
	}
	return d, nil
}

// tag is the rules' tag: the parameter, else the step id, else one made
// from the protocol and ports.
func (d *Drop) tag(env *step.Env) string {
	if d.Tag != "" {
		return d.Tag
	}
	if env.StepID != "" && ValidateTag("tag", env.StepID) == nil {
		return env.StepID
	}
	return d.Protocol + "-" + strings.ReplaceAll(d.Ports.String(), ":", "-")
}

func (d *Drop) sets(env *step.Env) ([]ruleSet, string, error) {
	if err := ValidateTag("run id", env.RunID); err != nil {
		return nil, "", fmt.Errorf("firewall rule comment: %w", err)
	}
	c := Comment(env.RunID, d.tag(env))
	return dropRules(d.Families, d.Chain, d.Protocol, d.Ports, d.Sources, c), c, nil
}

// sshPorter is implemented by transports that reach the host over SSH.
type sshPorter interface{ SSHPort() int }

// refuseSSH fails when the rule would cut the runner's SSH connection.
func (d *Drop) refuseSSH(tr transport.Transport, seen int) error {
	if d.Protocol != "tcp" {
		return nil
	}
	ports := []int{seen}
	if sp, ok := tr.(sshPorter); ok {
		ports = append(ports, sp.SSHPort())
	}
	for _, p := range ports {
		if p > 0 && d.Ports.Contains(p) {
			return fmt.Errorf("refusing to drop tcp port %s on %s: the runner's SSH connection uses port %d, and the rule would lock the operators out",
				d.Ports, tr.Host(), p)
		}
	}
	return nil
}

func (d *Drop) describe(missing int, comment string) string {
	fams := make([]string, len(d.Families))
	for i, f := range d.Families {
		fams[i] = binary(f)
	}
	s := fmt.Sprintf("drop %s/%s at the top of %s (%s), comment %s", d.Protocol, d.Ports, d.Chain, strings.Join(fams, ", "), comment)
	if len(d.Sources) > 0 {
		src := make([]string, len(d.Sources))
		for i, p := range d.Sources {
			src[i] = p.String()
		}
		s += ", except from " + strings.Join(src, ", ")
	}
	return s + fmt.Sprintf(" (%d rules to insert)", missing)
}

// Check implements step.Step. It lists the chain of each family (one
// session with the SSH port check); when rules with the step's tag are
// there, from this run or an earlier one, it asks iptables -C whether each
// wanted rule is among them (a second session). A rule an earlier run
// inserted counts as present: a second run changes nothing.
func (d *Drop) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	sets, comment, err := d.sets(env)
	if err != nil {
		return step.Observation{}, err
	}
	b := backendFor(env.Transport, env.Secrets)
	var list []op
	for _, f := range d.Families {
		list = append(list, op{Op: "-S", Rule: Rule{Family: f, Chain: d.Chain}})
	}
	res, sshPort, err := b.exec(ctx, list, true)
	if err != nil {
		return step.Observation{}, err
	}
	d.sshPort = sshPort
	if err := d.refuseSSH(env.Transport, sshPort); err != nil {
		return step.Observation{}, err
	}
	tag := d.tag(env)
	var comments []string
	seen := map[string]bool{}
	for i, f := range d.Families {
		for _, r := range parseListing(f, d.Chain, res[i].Out) {
			if c := Comment(r.Run, r.Tag); r.Tag == tag && !seen[c] {
				seen[c] = true
				comments = append(comments, c)
			}
		}
	}
	var rules []Rule
	for _, s := range sets {
		rules = append(rules, s.all()...)
	}
	d.found = map[string]string{}
	if len(comments) > 0 {
		var checks []op
		for _, r := range rules {
			for _, c := range comments {
				checks = append(checks, op{Op: "-C", Rule: withComment(r, c)})
			}
		}
		res, _, err := b.exec(ctx, checks, false)
		if err != nil {
			return step.Observation{}, err
		}
		for i, r := range rules {
			for j, c := range comments {
				if res[i*len(comments)+j].OK && d.found[r.String()] == "" {
					d.found[r.String()] = c
				}
			}
		}
	}
	missing := len(rules) - len(d.found)
	obs := step.Observation{Outputs: step.Outputs{"comment": comment, "rules": strconv.Itoa(len(rules))}}
	if missing > 0 {
		obs.Change = d.describe(missing, comment)
	}
	return obs, nil
}

// Apply implements step.Step. It inserts, in one session, the rules Check
// found missing, each after an iptables -C of its own: never a duplicate.
// A DROP goes in under its exemptions; exemptions already there without
// their DROP are moved above it.
func (d *Drop) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	if err := d.refuseSSH(env.Transport, d.sshPort); err != nil {
		return nil, err
	}
	sets, comment, err := d.sets(env)
	if err != nil {
		return nil, err
	}
	found := d.found
	var ops []op
	add := func(o op) int { ops = append(ops, o); return len(ops) }
	insert := func(r Rule) {
		c := add(op{Op: "-C", Rule: r})
		add(op{Op: "-I", Rule: r, Unless: c})
	}
	n := 0
	for _, s := range sets {
		n += len(s.all())
		if found[s.Drop.String()] != "" {
			for _, a := range s.Accepts {
				if found[a.String()] == "" {
					insert(a)
				}
			}
			continue
		}
		for _, a := range s.Accepts {
			if k := found[a.String()]; k != "" {
				old := withComment(a, k)
				c := add(op{Op: "-C", Rule: old})
				add(op{Op: "-D", Rule: old, OnlyIf: c})
			}
		}
		insert(s.Drop)
		for _, a := range s.Accepts {
			insert(a)
		}
	}
	if len(ops) > 0 {
		if _, _, err := backendFor(env.Transport, env.Secrets).exec(ctx, ops, false); err != nil {
			return nil, fmt.Errorf("insert firewall rules: %w", err)
		}
	}
	return step.Outputs{"comment": comment, "rules": strconv.Itoa(n)}, nil
}

// withComment is r with its comment replaced by c.
func withComment(r Rule, c string) Rule {
	spec := append([]string(nil), r.Spec...)
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "--comment" {
			spec[i+1] = c
		}
	}
	return Rule{Family: r.Family, Chain: r.Chain, Spec: spec}
}
