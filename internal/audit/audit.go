// Package audit is the security checklist for a LiteLLM deployment as
// checks: master key age, virtual key age, request rates, the master key in
// client configuration files, containment left in place, and the runner's
// own Vault token. Every check only observes; none writes anywhere.
//
// A check never prints or returns a key: keys are compared by SHA-256, and
// results name keys by alias, display name (sk-...abcd) or fingerprint.
package audit

import (
	"context"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/vault"
)

// Status of one check.
type Status string

const (
	Pass Status = "pass"
	Warn Status = "warn" // could not be checked fully, or worth a look
	Fail Status = "fail"
)

// Check names.
const (
	CheckMasterKeyAge   = "master-key-age"
	CheckVirtualKeyAge  = "virtual-key-age"
	CheckRequestRate    = "request-rate"
	CheckMasterInConfig = "master-key-in-config"
	CheckContainment    = "containment-lifted"
	CheckVaultToken     = "vault-token-privileges"
)

// Result is one check's verdict on one target.
type Result struct {
	Check  string `json:"check"`
	Target string `json:"target,omitempty"`
	Status Status `json:"status"`
	Reason string `json:"reason"`
	// Details lists what the reason summarises (keys by alias or display
	// name, files, rules); never a secret.
	Details []string `json:"details,omitempty"`
}

// HostVarConfigFiles is the host variable naming the client configuration
// files to scan for the master key: absolute paths separated by commas
// (inventory variables are strings), e.g.
// "client_config_files: /etc/open-webui/env,/srv/app/.env".
const HostVarConfigFiles = "client_config_files"

// Config holds the policies.
type Config struct {
	// MasterKeyPath is the master key's path under the KV v2 mount.
	MasterKeyPath string
	// MasterKeyMaxAge and VirtualKeyMaxAge are the rotation policies.
	MasterKeyMaxAge  time.Duration
	VirtualKeyMaxAge time.Duration
	// RequestsPerHour is the most requests one key may make in any hour of
	// the last Window before it is reported.
	RequestsPerHour int
	Window          time.Duration
	// ProbePaths are Vault paths outside the runner's prefix on which its
	// token must have no capability (default: DefaultProbePaths).
	ProbePaths []string
	Now        time.Time
}

// Defaults fills what c leaves out.
func (c Config) Defaults(inv *inventory.Inventory) Config {
	if c.MasterKeyPath == "" {
		p := "litellm"
		if inv != nil && inv.Vault.Prefix != "" {
			p = inv.Vault.Prefix
		}
		c.MasterKeyPath = p + "/master"
	}
	if c.MasterKeyMaxAge == 0 {
		c.MasterKeyMaxAge = 90 * 24 * time.Hour
	}
	if c.VirtualKeyMaxAge == 0 {
		c.VirtualKeyMaxAge = 90 * 24 * time.Hour
	}
	if c.RequestsPerHour == 0 {
		c.RequestsPerHour = 1000
	}
	if c.Window == 0 {
		c.Window = 24 * time.Hour
	}
	if c.Now.IsZero() {
		c.Now = time.Now()
	}
	c.Now = c.Now.UTC()
	return c
}

// Env is what the checks reach: built once by the caller, each on first use.
type Env struct {
	Inventory *inventory.Inventory
	Vault     func(ctx context.Context) (*vault.Client, error)
	DB        func(ctx context.Context) (*pgxpool.Pool, error)
	Transport func(ctx context.Context, h *inventory.Host) (transport.Transport, error)
	// VaultConfig is the Vault client's configuration, for the token check
	// (its token is sent only to its Address).
	VaultConfig func() (vault.Config, error)
	// Masker learns the keys read, so no error can carry one.
	Masker *secret.Masker
}

// Run runs every check and returns the results in a stable order.
func Run(ctx context.Context, env Env, cfg Config) []Result {
	cfg = cfg.Defaults(env.Inventory)
	var out []Result
	keys, mk := masterKeys(ctx, env, cfg)
	out = append(out, mk)
	out = append(out, VirtualKeyAge(ctx, env, cfg))
	out = append(out, RequestRate(ctx, env, cfg, keys))
	out = append(out, ConfigFiles(ctx, env, keys)...)
	out = append(out, Containment(ctx, env)...)
	out = append(out, VaultToken(ctx, env, cfg))
	return out
}

// Failed reports whether any result failed.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

// Counts returns the number of results per status.
func Counts(rs []Result) map[Status]int {
	m := map[Status]int{}
	for _, r := range rs {
		m[r.Status]++
	}
	return m
}

func sortedHosts(hs []*inventory.Host) []*inventory.Host {
	out := append([]*inventory.Host(nil), hs...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// age renders a duration in days (or hours below a day).
func age(d time.Duration) string {
	if d < 24*time.Hour {
		return d.Round(time.Minute).String()
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}
