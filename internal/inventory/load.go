package inventory

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/runbook-dev/runbook/internal/runbook/strictyaml"
)

// DecodeError is one problem in an inventory file, at a position; it is
// the same type as runbook.DecodeError.
type DecodeError = strictyaml.Error

// DecodeErrors lists every problem found, sorted by position.
type DecodeErrors = strictyaml.Errors

// AllGroup is the implicit group of every host. No group or host may take
// its name.
const AllGroup = "all"

// Transports a host may use.
const (
	TransportSSH   = "ssh"
	TransportLocal = "local"
)

// Defaults.
const (
	DefaultPort  = 22
	DefaultUser  = "root"
	DefaultMount = "secret"
)

// The keys each mapping of an inventory accepts. The schema test checks
// that inventory.schema.json names exactly these.
var (
	inventoryKeys = []string{"environment", "vars", "groups", "ssh", "vault", "database", "secrets", "hosts"}
	groupKeys     = []string{"vars"}
	sshKeys       = []string{"known_hosts", "config", "identity", "passphrase", "user", "port", "jump", "connect_timeout", "command_timeout", "keepalive"}
	vaultKeys     = []string{"address", "token", "ca_cert", "allowed_addresses", "role_id", "secret_id", "mount", "prefix"}
	databaseKeys  = []string{"url"}
	secretRefKeys = []string{"env", "file", "vault"}
	hostKeys      = []string{"address", "port", "user", "groups", "vars", "sudo", "transport", "jump"}
)

const secretRefs = `{env: NAME}, {file: PATH} or {vault: "path#field"}`

const secretHint = "reference it instead: " + secretRefs

var (
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	varNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]{0,63}$`)
	nameRE     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$`)
	envRE      = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	userRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}$`)
	labelRE    = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	kvPathRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$`)
	secretName = regexp.MustCompile(`(?i)(password|passwd|passphrase|secret|token|api_?key|master_?key|private_?key|access_?key|secret_?key)$`)
)

// Load decodes an inventory from data; name is the file name errors show,
// and relative paths in it (known_hosts, identity, ca_cert, file secrets)
// are resolved against name's directory.
//
// The groups a host names must be declared under groups: a misspelt group
// would otherwise be a new, silent group, and a step on the intended one
// would skip the host. Every host is in the implicit group AllGroup.
// Hosts get their port, user and jump host from ssh: when they give none.
func Load(name string, data []byte) (*Inventory, error) {
	root, src, perr := strictyaml.Parse(name, data)
	d := &decoder{Decoder: strictyaml.Decoder{Src: src}, file: name, dir: filepath.Dir(name)}
	if perr != nil {
		d.Errs = append(d.Errs, perr.(strictyaml.Errors)...)
		if root == nil {
			return nil, d.Err()
		}
	}
	sum := sha256.Sum256(data)
	inv := &Inventory{
		File:    name,
		Digest:  "sha256:" + hex.EncodeToString(sum[:]),
		Vars:    map[string]string{},
		Groups:  map[string]*Group{},
		Secrets: map[string]SecretRef{},
	}
	d.ScanSecrets(root, "", secretHint)
	d.inventory(root, inv)
	if err := d.Err(); err != nil {
		return nil, err
	}
	return inv, nil
}

// LoadFile reads and decodes an inventory file.
func LoadFile(path string) (*Inventory, error) {
	data, err := strictyaml.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read inventory: %w", err)
	}
	return Load(path, data)
}

type decoder struct {
	strictyaml.Decoder
	file, dir string
}

func (d *decoder) pos(n *yaml.Node) Pos { return Pos{File: d.file, Line: n.Line, Col: n.Column} }

// path resolves a file path against the inventory's directory.
func (d *decoder) path(p string) string {
	if p == "" || filepath.IsAbs(p) || p == "~" || strings.HasPrefix(p, "~/") {
		// "~/" is the home directory, expanded where the file is opened.
		return p
	}
	return filepath.Join(d.dir, p)
}

// hostDecl is a host with the nodes needed for checks after all are read.
type hostDecl struct {
	h                 *Host
	nameN             *yaml.Node
	groupNs           []*yaml.Node
	jumpN             *yaml.Node
	hasPort, hasUser  bool
	hasJump, hasTrans bool
}

func (d *decoder) inventory(root *yaml.Node, inv *Inventory) {
	if root.Kind != yaml.MappingNode {
		d.Mapping(root, "", inventoryKeys)
		return
	}
	var hosts []hostDecl
	var hostsN *yaml.Node
	have := map[string]bool{}
	for _, f := range d.Mapping(root, "", inventoryKeys) {
		have[f.Key] = true
		switch f.Key {
		case "environment":
			if s, ok := d.Str(f.Value, "environment"); ok {
				if !envRE.MatchString(s) {
					d.Failf(f.Value, "environment", "invalid environment name %s: use a-z, 0-9, \"_\" and \"-\", as in staging or production", strictyaml.Quote(s))
				} else {
					inv.Environment = s
				}
			}
		case "vars":
			inv.Vars = d.vars(f.Value, "vars")
		case "groups":
			for _, g := range d.Mapping(f.Value, "groups", nil) {
				gp := strictyaml.Join("groups", g.Key)
				if !d.name(g.KeyN, "groups", "group", g.Key) {
					continue
				}
				grp := &Group{Name: g.Key, Vars: map[string]string{}, Pos: d.pos(g.KeyN)}
				for _, h := range d.MappingOrNull(g.Value, gp, groupKeys) {
					grp.Vars = d.vars(h.Value, strictyaml.Join(gp, "vars"))
				}
				inv.Groups[g.Key] = grp
			}
		case "ssh":
			d.ssh(f.Value, &inv.SSH)
		case "vault":
			d.vault(f.Value, &inv.Vault)
		case "database":
			for _, g := range d.Mapping(f.Value, "database", databaseKeys) {
				inv.Database.URL = d.secretRef(g.Value, "database.url")
			}
		case "secrets":
			for _, g := range d.Mapping(f.Value, "secrets", nil) {
				if !varNameRE.MatchString(g.Key) {
					d.Failf(g.KeyN, "secrets", "invalid secret name %s: use letters, digits, \"_\" and \"-\"", strictyaml.Quote(g.Key))
					continue
				}
				inv.Secrets[g.Key] = d.secretRef(g.Value, strictyaml.Join("secrets", g.Key))
			}
		case "hosts":
			hostsN = f.Value
			for _, g := range d.Mapping(f.Value, "hosts", nil) {
				if hd, ok := d.host(g); ok {
					hosts = append(hosts, hd)
				}
			}
		}
	}
	if !have["environment"] {
		d.Failf(root, "", "missing key %q: name the environment, as in staging or production", "environment")
	}
	if !have["hosts"] {
		d.Failf(root, "", "missing key %q", "hosts")
	} else if len(hosts) == 0 && hostsN != nil && len(d.Errs) == 0 {
		d.Failf(hostsN, "hosts", "an inventory needs at least one host")
	}
	if inv.SSH.Port == 0 {
		inv.SSH.Port = DefaultPort
	}
	if inv.SSH.User == "" {
		inv.SSH.User = DefaultUser
	}
	if inv.Vault.Mount == "" {
		inv.Vault.Mount = DefaultMount
	}
	d.hosts(inv, hosts)
}

// name checks a group or host name.
func (d *decoder) name(n *yaml.Node, path, what, s string) bool {
	switch {
	case s == AllGroup:
		d.Failf(n, path, "%q is the implicit group of every host: pick another %s name", AllGroup, what)
	case !nameRE.MatchString(s):
		d.Failf(n, path, "invalid %s name %s: use letters, digits, \".\", \"_\" and \"-\"", what, strictyaml.Quote(s))
	default:
		return true
	}
	return false
}

// vars decodes a mapping of variables. Values are strings; numbers and
// booleans are taken as their text.
func (d *decoder) vars(n *yaml.Node, path string) map[string]string {
	out := map[string]string{}
	for _, f := range d.Mapping(n, path, nil) {
		fp := strictyaml.Join(path, f.Key)
		if !varNameRE.MatchString(f.Key) {
			d.Failf(f.KeyN, path, "invalid variable name %s: use letters, digits, \"_\" and \"-\", starting with a letter or \"_\"", strictyaml.Quote(f.Key))
			continue
		}
		v := f.Value
		if v.Kind != yaml.ScalarNode || strictyaml.IsNull(v) {
			d.Failf(v, fp, "want a string, got %s: variables are strings", strictyaml.Describe(v))
			continue
		}
		if strings.Contains(v.Value, "${{") {
			d.Failf(v, fp, "templates are not expanded in inventories: write the value out")
			continue
		}
		if secretName.MatchString(f.Key) && v.Value != "" {
			if _, ok := strictyaml.LooksSecret(v.Value); !ok { // else reported already
				e := d.Src.SecretErrorNode(v, fp, "variable "+strictyaml.Quote(f.Key)+" is named like a secret: secrets are never written inline")
				e.Hint = "name it under secrets: with " + secretRefs
				d.Add(e)
			}
			continue
		}
		out[f.Key] = v.Value
	}
	return out
}

// secretRef decodes {env: NAME}, {file: PATH} or {vault: "path#field"}.
func (d *decoder) secretRef(n *yaml.Node, path string) SecretRef {
	ref := SecretRef{Pos: d.pos(n)}
	if n.Kind == yaml.ScalarNode && !strictyaml.IsNull(n) {
		if _, ok := strictyaml.LooksSecret(n.Value); !ok { // else reported already
			e := d.Src.SecretErrorNode(n, path, "a secret is a reference, not a value")
			e.Hint = "write " + secretRefs
			d.Add(e)
		}
		return ref
	}
	if strictyaml.IsNull(n) {
		d.Failf(n, path, "a secret reference has exactly one of env, file or vault")
		return ref
	}
	fields := d.Mapping(n, path, secretRefKeys)
	if n.Kind != yaml.MappingNode {
		return ref
	}
	if len(fields) != 1 {
		if len(fields) > 1 || len(n.Content) == 0 {
			d.Failf(n, path, "a secret reference has exactly one of env, file or vault")
		}
		return ref
	}
	f := fields[0]
	fp := strictyaml.Join(path, f.Key)
	s, ok := d.Str(f.Value, fp)
	if !ok {
		return ref
	}
	switch f.Key {
	case "env":
		if !envNameRE.MatchString(s) {
			d.Failf(f.Value, fp, "invalid environment variable name %s", strictyaml.Quote(s))
			return ref
		}
		ref.Env = s
	case "file":
		if s == "" {
			d.Failf(f.Value, fp, "empty path")
			return ref
		}
		ref.File = d.path(s)
	case "vault":
		p, field, ok := strings.Cut(s, "#")
		if !ok || field == "" || !kvPathRE.MatchString(p) || strings.Contains(p, "..") {
			d.Failf(f.Value, fp, "want \"path#field\" under the KV mount, as in \"litellm/master#key\", got %s", strictyaml.Quote(s))
			return ref
		}
		ref.Vault = s
	}
	return ref
}

func (d *decoder) ssh(n *yaml.Node, s *SSH) {
	for _, f := range d.Mapping(n, "ssh", sshKeys) {
		fp := strictyaml.Join("ssh", f.Key)
		switch f.Key {
		case "known_hosts", "identity", "config":
			v, ok := d.Str(f.Value, fp)
			if !ok {
				continue
			}
			switch f.Key {
			case "known_hosts":
				s.KnownHosts = d.path(v)
			case "config":
				s.Config = d.path(v)
			default:
				s.Identity = d.path(v)
			}
		case "passphrase":
			s.Passphrase = d.secretRef(f.Value, fp)
		case "user":
			s.User = d.user(f.Value, fp)
		case "port":
			s.Port, _ = d.Int(f.Value, fp, 1, 65535)
		case "jump":
			if v, ok := d.Str(f.Value, fp); ok && v != "" {
				if err := checkJump(v); err != nil {
					d.Failf(f.Value, fp, "%v", err)
				} else {
					s.Jump = v
				}
			}
		case "connect_timeout", "command_timeout", "keepalive":
			if _, ok := d.Duration(f.Value, fp); !ok {
				continue
			}
			switch f.Key {
			case "connect_timeout":
				s.ConnectTimeout = f.Value.Value
			case "command_timeout":
				s.CommandTimeout = f.Value.Value
			default:
				s.Keepalive = f.Value.Value
			}
		}
	}
}

func (d *decoder) user(n *yaml.Node, path string) string {
	v, ok := d.Str(n, path)
	if !ok {
		return ""
	}
	if !userRE.MatchString(v) {
		d.Failf(n, path, "invalid user name %s: use letters, digits, \"_\", \".\" and \"-\"", strictyaml.Quote(v))
		return ""
	}
	return v
}

func (d *decoder) vault(n *yaml.Node, v *Vault) {
	var addrN *yaml.Node
	var hasToken, hasRole, hasSecret bool
	for _, f := range d.Mapping(n, "vault", vaultKeys) {
		fp := strictyaml.Join("vault", f.Key)
		switch f.Key {
		case "address":
			if s, ok := d.Str(f.Value, fp); ok {
				if err := checkURL(s); err != nil {
					d.Failf(f.Value, fp, "%v", err)
				} else {
					v.Address, addrN = s, f.Value
				}
			}
		case "token":
			v.Token, hasToken = d.secretRef(f.Value, fp), true
		case "role_id":
			v.RoleID, hasRole = d.secretRef(f.Value, fp), true
		case "secret_id":
			v.SecretID, hasSecret = d.secretRef(f.Value, fp), true
		case "ca_cert":
			if s, ok := d.Str(f.Value, fp); ok {
				v.CACert = d.path(s)
			}
		case "allowed_addresses":
			list, nodes := d.Strings(f.Value, fp, false)
			for i, s := range list {
				if err := checkURL(s); err != nil {
					d.Failf(nodes[i], strictyaml.Index(fp, i), "%v", err)
					continue
				}
				v.AllowedAddresses = append(v.AllowedAddresses, s)
			}
		case "mount", "prefix":
			s, ok := d.Str(f.Value, fp)
			if !ok {
				continue
			}
			if !kvPathRE.MatchString(s) || strings.Contains(s, "..") {
				d.Failf(f.Value, fp, "invalid KV path %s: use names joined by \"/\", with no leading or trailing \"/\"", strictyaml.Quote(s))
				continue
			}
			if f.Key == "mount" {
				v.Mount = s
			} else {
				v.Prefix = s
			}
		}
	}
	if hasRole != hasSecret {
		d.Failf(n, "vault", "AppRole login needs both role_id and secret_id")
	}
	if hasToken && hasRole {
		d.Failf(n, "vault", "give a token or AppRole credentials (role_id and secret_id), not both")
	}
	if addrN != nil && len(v.AllowedAddresses) > 0 && !containsURL(v.AllowedAddresses, v.Address) {
		d.Failf(addrN, "vault.address", "%s is not in vault.allowed_addresses", strictyaml.Quote(v.Address))
	}
}

func containsURL(list []string, s string) bool {
	for _, x := range list {
		if strings.TrimRight(x, "/") == strings.TrimRight(s, "/") {
			return true
		}
	}
	return false
}

// checkURL checks a Vault address: http or https, a host, no user info.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("want an http:// or https:// address, got %s", strictyaml.Quote(s))
	}
	if u.User != nil {
		return fmt.Errorf("an address holds no user or password")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("an address holds no query or fragment")
	}
	return nil
}

// checkAddress checks a host address: an IP address or a DNS name.
func checkAddress(s string) error {
	if net.ParseIP(s) != nil {
		return nil
	}
	if len(s) > 253 || s == "" {
		return fmt.Errorf("invalid address %s: want an IP address or a host name", strictyaml.Quote(s))
	}
	for _, l := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if !labelRE.MatchString(l) {
			return fmt.Errorf("invalid address %s: want an IP address or a host name", strictyaml.Quote(s))
		}
	}
	return nil
}

// checkJump checks a jump host written as [user@]host[:port]; an inventory
// host name also passes (it is a valid host name).
func checkJump(s string) error {
	rest := s
	if u, h, ok := strings.Cut(s, "@"); ok {
		if !userRE.MatchString(u) {
			return fmt.Errorf("invalid jump host %s: want [user@]host[:port] or an inventory host", strictyaml.Quote(s))
		}
		rest = h
	}
	host := rest
	if h, p, err := net.SplitHostPort(rest); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("invalid jump host %s: port must be 1-65535", strictyaml.Quote(s))
		}
		host = h
	}
	if checkAddress(host) != nil && !nameRE.MatchString(host) {
		return fmt.Errorf("invalid jump host %s: want [user@]host[:port] or an inventory host", strictyaml.Quote(s))
	}
	if strings.HasPrefix(host, "-") {
		return fmt.Errorf("invalid jump host %s: want [user@]host[:port] or an inventory host", strictyaml.Quote(s))
	}
	return nil
}

func (d *decoder) host(f strictyaml.Field) (hostDecl, bool) {
	path := strictyaml.Join("hosts", f.Key)
	if !d.name(f.KeyN, "hosts", "host", f.Key) {
		return hostDecl{}, false
	}
	h := &Host{Name: f.Key, Vars: map[string]string{}, Pos: d.pos(f.KeyN)}
	hd := hostDecl{h: h, nameN: f.KeyN}
	var addrN *yaml.Node
	for _, g := range d.Mapping(f.Value, path, hostKeys) {
		fp := strictyaml.Join(path, g.Key)
		switch g.Key {
		case "address":
			if s, ok := d.Str(g.Value, fp); ok {
				if err := checkAddress(s); err != nil {
					d.Failf(g.Value, fp, "%v", err)
				} else {
					h.Address = s
				}
			}
			addrN = g.Value
		case "port":
			h.Port, _ = d.Int(g.Value, fp, 1, 65535)
			hd.hasPort = true
		case "user":
			h.User = d.user(g.Value, fp)
			hd.hasUser = true
		case "groups":
			names, nodes := d.Strings(g.Value, fp, false)
			h.Groups = names
			hd.groupNs = nodes
		case "vars":
			h.Vars = d.vars(g.Value, fp)
		case "sudo":
			h.Sudo, _ = d.Bool(g.Value, fp)
		case "transport":
			if s, ok := d.Str(g.Value, fp); ok {
				if s != TransportSSH && s != TransportLocal {
					d.Failf(g.Value, fp, "want %s or %s, got %s", TransportSSH, TransportLocal, strictyaml.Quote(s))
				} else {
					h.Transport = s
					hd.hasTrans = true
				}
			}
		case "jump":
			if s, ok := d.Str(g.Value, fp); ok {
				if s != "" {
					if err := checkJump(s); err != nil {
						d.Failf(g.Value, fp, "%v", err)
						break
					}
				}
				h.Jump = s
				hd.hasJump = true
				hd.jumpN = g.Value
			}
		}
	}
	if h.Transport == "" {
		h.Transport = TransportSSH
	}
	if addrN == nil && h.Transport == TransportSSH && f.Value.Kind == yaml.MappingNode {
		d.Failf(f.KeyN, path, "missing key %q", "address")
	}
	return hd, true
}

// hosts applies defaults and checks what needs every host and group read.
func (d *decoder) hosts(inv *Inventory, hosts []hostDecl) {
	byName := map[string]*Host{}
	for _, hd := range hosts {
		byName[hd.h.Name] = hd.h
	}
	groupNames := make([]string, 0, len(inv.Groups))
	for g := range inv.Groups {
		groupNames = append(groupNames, g)
		if h, ok := byName[g]; ok {
			d.Add(d.Src.ErrorAt(h.Pos.Line, h.Pos.Col, "hosts", fmt.Sprintf("host %s has the name of a group: on: could not tell them apart", strictyaml.Quote(g))))
		}
	}
	for _, hd := range hosts {
		h := hd.h
		seen := map[string]bool{}
		for i, g := range h.Groups {
			path := strictyaml.Index(strictyaml.Join(strictyaml.Join("hosts", h.Name), "groups"), i)
			switch {
			case g == AllGroup:
				d.Failf(hd.groupNs[i], path, "every host is in %q already", AllGroup)
			case inv.Groups[g] == nil:
				e := d.Failf(hd.groupNs[i], path, "unknown group %s", strictyaml.Quote(g))
				if s := strictyaml.Suggest(g, groupNames); s != "" {
					e.Msg += fmt.Sprintf("; did you mean %q?", s)
				} else {
					e.Hint = "declare it under groups:"
				}
			case seen[g]:
				d.Failf(hd.groupNs[i], path, "group %s listed twice", strictyaml.Quote(g))
			}
			seen[g] = true
		}
		if !hd.hasPort {
			h.Port = inv.SSH.Port
		}
		if !hd.hasUser || h.User == "" {
			h.User = inv.SSH.User
		}
		if !hd.hasJump && inv.SSH.Jump != h.Name {
			// The jump host itself connects directly.
			h.Jump = inv.SSH.Jump
		} else if h.Jump == h.Name {
			d.Failf(hd.jumpN, strictyaml.Join(strictyaml.Join("hosts", h.Name), "jump"), "a host cannot be its own jump host")
		}
		if h.Transport == TransportLocal && h.Address == "" {
			h.Address = "localhost"
		}
		inv.Hosts = append(inv.Hosts, h)
	}
	// A jump chain through inventory hosts must end.
	for _, hd := range hosts {
		if hd.h.Jump == hd.h.Name {
			continue // reported above
		}
		seen := map[string]bool{hd.h.Name: true}
		for j := hd.h.Jump; j != ""; {
			next, ok := byName[j]
			if !ok {
				break
			}
			if seen[j] {
				if hd.jumpN != nil {
					d.Failf(hd.jumpN, strictyaml.Join(strictyaml.Join("hosts", hd.h.Name), "jump"), "jump hosts form a loop through %s", strictyaml.Quote(j))
				}
				break
			}
			seen[j] = true
			j = next.Jump
		}
	}
}
