// Package inventory is the set of hosts a runbook runs against, one file per
// environment, with the references to the secrets the run needs. Secrets are
// never written inline: a value that looks like a key is rejected.
package inventory

// Pos is a position in an inventory file.
type Pos struct {
	File string
	Line int
	Col  int
}

// Inventory is a decoded inventory file.
type Inventory struct {
	File        string
	Digest      string // "sha256:" + hex of the file's bytes
	Environment string // "staging", "production", ...
	Vars        map[string]string
	Groups      map[string]*Group
	Hosts       []*Host // in file order
	SSH         SSH
	Vault       Vault
	Database    Database
	// Secrets are named references the runbook's kinds may ask for.
	Secrets map[string]SecretRef
}

// Group is a named set of hosts with shared variables.
type Group struct {
	Name string
	Vars map[string]string
	Pos  Pos
}

// Host is one machine.
type Host struct {
	Name    string
	Address string
	Port    int    // default 22
	User    string // default from SSH.User, else root
	Groups  []string
	Vars    map[string]string
	// Sudo runs privileged commands through "sudo -n" (for non-root users).
	Sudo bool
	// Transport is "ssh" (default) or "local" (the runner is on this host).
	Transport string
	// Jump is a ProxyJump host, "user@host:port" or an inventory host name.
	Jump string
	Pos  Pos
}

// SSH holds client settings shared by every host.
type SSH struct {
	KnownHosts string // path to a known_hosts file
	// Config is an ssh_config file whose HostName, User, Port and
	// ProxyJump fill in what the inventory leaves unset.
	Config   string
	Identity string // path to a private key file
	// Passphrase for an encrypted identity.
	Passphrase SecretRef
	User       string
	Port       int
	Jump       string
	// ConnectTimeout, CommandTimeout and Keepalive are durations as written.
	ConnectTimeout string
	CommandTimeout string
	Keepalive      string
}

// Vault holds the Vault client settings.
type Vault struct {
	Address string
	Token   SecretRef
	CACert  string
	// AllowedAddresses lists the addresses that may receive the token.
	AllowedAddresses []string
	// AppRole login, as an alternative to a token.
	RoleID   SecretRef
	SecretID SecretRef
	// Mount is the KV v2 mount, default "secret".
	Mount string
	// Prefix is the path under the mount where the runner keeps keys.
	Prefix string
}

// Database is LiteLLM's PostgreSQL database.
type Database struct {
	URL SecretRef
}

// SecretRef says where a secret comes from. Exactly one field is set.
type SecretRef struct {
	Env   string // environment variable name
	File  string // file path
	Vault string // "path#field" under the KV v2 mount
	Pos   Pos
}

// IsZero reports whether no source is set.
func (r SecretRef) IsZero() bool { return r.Env == "" && r.File == "" && r.Vault == "" }

// String describes the source without revealing anything.
func (r SecretRef) String() string {
	switch {
	case r.Env != "":
		return "env:" + r.Env
	case r.File != "":
		return "file:" + r.File
	case r.Vault != "":
		return "vault:" + r.Vault
	}
	return "none"
}
