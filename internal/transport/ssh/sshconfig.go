package ssh

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// The subset of OpenSSH's ssh_config(5) the runner reads (Config.SSHConfig):
// Host blocks with patterns (*, ?, and ! to negate), and in them HostName,
// User, Port and ProxyJump (one hop, or none). As in OpenSSH, the first
// value found for a keyword wins, and a Host line's patterns are matched
// against the name given to connect: the inventory host's name. Options
// the runner has its own settings for, or that would weaken it
// (IdentityFile, StrictHostKeyChecking, UserKnownHostsFile, ...), are
// ignored, as are Match and Include blocks: the options under a Match line
// apply to no host here. The inventory always wins: its host and ssh
// settings come first, ssh_config fills in only what it leaves unset.

// sshConfig is a parsed ssh_config.
type sshConfig struct {
	blocks []configBlock
}

type configBlock struct {
	patterns []string // nil: before any Host line (applies to all)
	match    bool     // a Match block: applies to nothing here
	opts     hostOpts
}

// hostOpts are the options the runner takes from ssh_config.
type hostOpts struct {
	HostName string
	User     string
	Port     int
	// ProxyJump is "none" to say no jump explicitly.
	ProxyJump string
}

var (
	configUserRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)
	configHostRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}$`)
)

// parseSSHConfig reads the subset from file. A value the runner would use
// but that is not a plain host name, user, port or jump is an error naming
// the file and line: nothing from it reaches a connection.
func parseSSHConfig(file string) (*sshConfig, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("ssh config: %w", err)
	}
	defer f.Close()
	c := &sshConfig{blocks: []configBlock{{}}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	line := 0
	for sc.Scan() {
		line++
		key, val, ok := configLine(sc.Text())
		if !ok {
			continue
		}
		bad := func(format string, a ...any) error {
			return fmt.Errorf("ssh config %s:%d: %s: %s", file, line, key, fmt.Sprintf(format, a...))
		}
		cur := &c.blocks[len(c.blocks)-1]
		switch strings.ToLower(key) {
		case "host":
			pats := strings.Fields(val)
			if len(pats) == 0 {
				return nil, bad("no pattern")
			}
			c.blocks = append(c.blocks, configBlock{patterns: pats})
		case "match":
			c.blocks = append(c.blocks, configBlock{match: true})
		case "hostname":
			if cur.opts.HostName == "" {
				if !configHostRE.MatchString(val) {
					return nil, bad("invalid host name %q", val)
				}
				cur.opts.HostName = val
			}
		case "user":
			if cur.opts.User == "" {
				if !configUserRE.MatchString(val) {
					return nil, bad("invalid user name %q", val)
				}
				cur.opts.User = val
			}
		case "port":
			if cur.opts.Port == 0 {
				n, err := strconv.Atoi(val)
				if err != nil || n < 1 || n > 65535 {
					return nil, bad("port must be 1-65535, got %q", val)
				}
				cur.opts.Port = n
			}
		case "proxyjump":
			if cur.opts.ProxyJump == "" {
				if err := checkConfigJump(val); err != nil {
					return nil, bad("%v", err)
				}
				cur.opts.ProxyJump = val
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("ssh config %s:%d: %w", file, line+1, err)
	}
	return c, nil
}

// configLine splits "Keyword value", "Keyword=value" or "Keyword = value";
// blank lines and comments give ok false. A value in double quotes loses
// them.
func configLine(s string) (key, val string, ok bool) {
	s = strings.TrimSpace(s)
	if s == "" || s[0] == '#' {
		return "", "", false
	}
	i := strings.IndexAny(s, " \t=")
	if i < 0 {
		return s, "", true
	}
	key = s[:i]
	val = strings.TrimSpace(s[i:])
	val = strings.TrimSpace(strings.TrimPrefix(val, "="))
	if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
		val = val[1 : len(val)-1]
	}
	return key, val, true
}

// checkConfigJump accepts none or one hop [user@]host[:port].
func checkConfigJump(v string) error {
	if v == "none" {
		return nil
	}
	if strings.Contains(v, ",") {
		return fmt.Errorf("more than one jump host in %q is not supported", v)
	}
	rest := v
	if u, h, ok := strings.Cut(v, "@"); ok {
		if !configUserRE.MatchString(u) {
			return fmt.Errorf("invalid jump host %q", v)
		}
		rest = h
	}
	host := rest
	if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[:i], ":") {
		n, err := strconv.Atoi(rest[i+1:])
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("invalid jump host %q: port must be 1-65535", v)
		}
		host = rest[:i]
	}
	if !configHostRE.MatchString(host) {
		return fmt.Errorf("invalid jump host %q", v)
	}
	return nil
}

// lookup gathers the options for name: the first value of each keyword in
// file order, over the blocks whose patterns match.
func (c *sshConfig) lookup(name string) hostOpts {
	var o hostOpts
	if c == nil {
		return o
	}
	for _, b := range c.blocks {
		if b.match || b.patterns != nil && !hostMatches(b.patterns, name) {
			continue
		}
		if o.HostName == "" {
			o.HostName = b.opts.HostName
		}
		if o.User == "" {
			o.User = b.opts.User
		}
		if o.Port == 0 {
			o.Port = b.opts.Port
		}
		if o.ProxyJump == "" {
			o.ProxyJump = b.opts.ProxyJump
		}
	}
	return o
}

// hostMatches applies a Host line's patterns to name: some pattern
// matches, and no negated one does.
func hostMatches(patterns []string, name string) bool {
	hit := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		// ssh_config patterns know * and ?; path.Match's [ and \ are
		// taken literally by escaping them.
		p = strings.NewReplacer(`\`, `\\`, `[`, `\[`).Replace(p)
		ok, _ := path.Match(p, name)
		if ok && neg {
			return false
		}
		hit = hit || ok
	}
	return hit
}
