// Package firewall holds the firewall.* kinds: drop traffic to a port with
// iptables and ip6tables rules inserted at the top of a chain, and lift
// them again. Every rule carries a comment naming the run and the step that
// made it ("runbook:RUN:TAG"), which is how lift finds them.
//
// Over SSH the rules are iptables argument lists run through the transport,
// a step's commands in one session; on the local transport they go through
// github.com/coreos/go-iptables. The rule model is the same.
package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Families.
const (
	IPv4 = "ipv4"
	IPv6 = "ipv6"
)

// CommentPrefix starts the comment of every rule the runner makes.
const CommentPrefix = "runbook:"

// binary is the iptables program of a family.
func binary(family string) string {
	if family == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// PortRange is a port or an inclusive range of ports.
type PortRange struct{ Lo, Hi int }

// ParsePortRange accepts "4000" or "4000:4010" (iptables' form), ports 1
// to 65535, low end first.
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, ":")
	a, err := parsePort(lo)
	if err != nil {
		return PortRange{}, err
	}
	if !isRange {
		return PortRange{a, a}, nil
	}
	b, err := parsePort(hi)
	if err != nil {
		return PortRange{}, err
	}
	if b < a {
		return PortRange{}, fmt.Errorf("port range %q ends before it starts", s)
	}
	return PortRange{a, b}, nil
}

func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
		}
	}
	n, _ := strconv.Atoi(s)
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return n, nil
}

func (p PortRange) String() string {
	if p.Lo == p.Hi {
		return strconv.Itoa(p.Lo)
	}
	return strconv.Itoa(p.Lo) + ":" + strconv.Itoa(p.Hi)
}

// Contains reports whether port is in the range.
func (p PortRange) Contains(port int) bool { return port >= p.Lo && port <= p.Hi }

// ValidateChain accepts a chain name of 1 to 28 letters, digits, '_' and
// '-', not starting with '-'.
func ValidateChain(s string) error {
	if s == "" || len(s) > 28 {
		return fmt.Errorf("chain %q: want 1 to 28 characters", s)
	}
	if s[0] == '-' {
		return fmt.Errorf("chain %q starts with '-'", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("chain %q holds %q: want letters, digits, '_' and '-'", s, c)
		}
	}
	return nil
}

// ValidateTag accepts a run id or a tag, the two parts of a rule's comment
// after the prefix: 1 to 64 letters, digits, '.', '_' and '-', starting
// with a letter or digit. No quote, space, colon or shell character fits.
func ValidateTag(what, s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("%s %q: want 1 to 64 characters", what, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("%s %q must start with a letter or digit", what, s)
		}
		if !alnum && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%s %q holds %q: want letters, digits, '.', '_' and '-'", what, s, c)
		}
	}
	return nil
}

// Comment is the comment of a rule made by run for tag.
func Comment(run, tag string) string { return CommentPrefix + run + ":" + tag }

// ParseComment splits a comment made by Comment.
func ParseComment(c string) (run, tag string, ok bool) {
	rest, ok := strings.CutPrefix(c, CommentPrefix)
	if !ok {
		return "", "", false
	}
	run, tag, ok = strings.Cut(rest, ":")
	if !ok || ValidateTag("run id", run) != nil || ValidateTag("tag", tag) != nil {
		return "", "", false
	}
	return run, tag, true
}

// ParseSources parses exempt sources: addresses or CIDR prefixes, IPv4 or
// IPv6, returned masked to their prefix and sorted.
func ParseSources(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, s := range ss {
		var p netip.Prefix
		if strings.Contains(s, "/") {
			var err error
			p, err = netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("exempt source %q: not an address or CIDR prefix", s)
			}
		} else {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("exempt source %q: not an address or CIDR prefix", s)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("exempt source %q: zones are not allowed", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !p.IsValid() {
			return nil, fmt.Errorf("exempt source %q: not an address or CIDR prefix", s)
		}
		p = p.Masked()
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// Rule is one iptables rule: a family, a chain and the rule specification
// that follows the chain in -C, -I and -D.
type Rule struct {
	Family string
	Chain  string
	Spec   []string
}

// Args is the iptables argument list for op ("-C", "-D", or "-I" with a
// position) on r.
func (r Rule) Args(op string, pos ...int) []string {
	a := []string{binary(r.Family), "-w", op, r.Chain}
	for _, p := range pos {
		a = append(a, strconv.Itoa(p))
	}
	return append(a, r.Spec...)
}

func (r Rule) String() string { return strings.Join(r.Args("-A"), " ") }

// ruleSet is one family's rules for a drop: the DROP rule (for every
// interface but loopback) and, above it, one ACCEPT rule per exempt source
// of that family.
type ruleSet struct {
	Drop    Rule
	Accepts []Rule
}

// all lists the set's rules, DROP first.
func (s ruleSet) all() []Rule { return append([]Rule{s.Drop}, s.Accepts...) }

// dropRules builds the rule sets of a drop.
func dropRules(families []string, chain, proto string, ports PortRange, sources []netip.Prefix, comment string) []ruleSet {
	match := func() []string {
		return []string{"-p", proto, "-m", proto, "--dport", ports.String(), "-m", "comment", "--comment", comment}
	}
	var sets []ruleSet
	for _, fam := range families {
		// Loopback stays open: health probes run on the gateway itself
		// (through SSH) while its port is closed to the network.
		drop := append([]string{"!", "-i", "lo"}, match()...)
		s := ruleSet{Drop: Rule{Family: fam, Chain: chain, Spec: append(drop, "-j", "DROP")}}
		for _, src := range sources {
			if src.Addr().Is4() != (fam == IPv4) {
				continue
			}
			spec := append([]string{"-s", src.String()}, match()...)
			s.Accepts = append(s.Accepts, Rule{Family: fam, Chain: chain, Spec: append(spec, "-j", "ACCEPT")})
		}
		sets = append(sets, s)
	}
	return sets
}

// listed is a rule found in `iptables -S CHAIN` output.
type listed struct {
	Rule
	Run, Tag string
}

// parseListing finds the rules the runner made in `iptables -S CHAIN`
// output. A line that does not parse is left alone: lift touches only
// rules whose comment it recognises.
func parseListing(family, chain, out string) []listed {
	var found []listed
	for _, line := range strings.Split(out, "\n") {
		f, err := splitRuleLine(strings.TrimSpace(line))
		if err != nil || len(f) < 3 || f[0] != "-A" || f[1] != chain {
			continue
		}
		spec := f[2:]
		for i := 0; i+1 < len(spec); i++ {
			if spec[i] != "--comment" {
				continue
			}
			if run, tag, ok := ParseComment(spec[i+1]); ok {
				found = append(found, listed{Rule: Rule{Family: family, Chain: chain, Spec: spec}, Run: run, Tag: tag})
			}
			break
		}
	}
	return found
}

var errUnterminated = errors.New("unterminated quote")

// splitRuleLine splits a line of `iptables -S` into words: iptables
// prints words with spaces in double quotes, escaping '"' and '\'.
func splitRuleLine(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	in, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case in && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			in = !in
			have = true
		case !in && (c == ' ' || c == '\t'):
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if in {
		return nil, errUnterminated
	}
	if have {
		words = append(words, cur.String())
	}
	return words, nil
}

// sshServerPort reads the server port from an SSH_CONNECTION value
// ("client_ip client_port server_ip server_port"); 0 when there is none.
func sshServerPort(v string) int {
	f := strings.Fields(v)
	if len(f) != 4 {
		return 0
	}
	n, err := strconv.Atoi(f[3])
	if err != nil || n < 1 || n > 65535 {
		return 0
	}
	return n
}
