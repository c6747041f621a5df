package audit

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

// probeName is the last element of the paths outside the runner's prefix
// whose capabilities are asked for; nothing is ever written there.
const probeName = "runbook-audit-probe"

// DefaultProbePaths are the paths, outside the runner's prefix, on which
// the runner's token must have no capability: policy, mount and auth
// administration, token creation, and the KV mount outside the prefix.
func DefaultProbePaths(mount string) []string {
	return []string{
		"sys/policies/acl/" + probeName,
		"sys/mounts/" + probeName,
		"sys/auth/" + probeName,
		"auth/token/create",
		mount + "/data/" + probeName,
		mount + "/metadata/" + probeName,
	}
}

// VaultToken asks Vault (sys/capabilities-self) what the runner's own token
// may do outside its prefix: anything but "deny" fails. It also warns when
// the token cannot read the master key's path.
func VaultToken(ctx context.Context, env Env, cfg Config) Result {
	cfg = cfg.Defaults(env.Inventory)
	r := Result{Check: CheckVaultToken, Target: "vault"}
	if env.VaultConfig == nil {
		r.Status, r.Reason = Warn, "cannot check: no Vault configuration"
		return r
	}
	vcfg, err := env.VaultConfig()
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return r
	}
	if vcfg.Token.IsZero() {
		r.Status, r.Reason = Warn, "cannot check: the runner logs in with AppRole; check the role's policies by hand"
		return r
	}
	// The client built from the same configuration passed the address
	// allow-list; building it first makes sure the token goes nowhere else.
	if _, err := env.Vault(ctx); err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return r
	}
	mount := strings.Trim(vcfg.Mount, "/")
	if mount == "" {
		mount = "secret"
	}
	outside := cfg.ProbePaths
	if len(outside) == 0 {
		outside = DefaultProbePaths(mount)
	}
	own := mount + "/data/" + strings.Trim(cfg.MasterKeyPath, "/")
	caps, err := capabilitiesSelf(ctx, vcfg.Address, vcfg.CACert, vcfg.Token.Reveal(), append(append([]string(nil), outside...), own))
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return r
	}
	var over []string
	for _, p := range outside {
		c := caps[p]
		if len(c) == 0 || (len(c) == 1 && c[0] == "deny") {
			continue
		}
		over = append(over, p+": "+strings.Join(c, ", "))
	}
	if len(over) > 0 {
		r.Details = over
		r.Status, r.Reason = Fail, fmt.Sprintf("the runner's token has capabilities on %d paths outside its prefix: give it a policy limited to %s/data/%s/*", len(over), mount, prefixOf(cfg.MasterKeyPath))
		return r
	}
	if !contains(caps[own], "read") && !contains(caps[own], "root") {
		r.Status, r.Reason = Warn, fmt.Sprintf("no capability outside its prefix, but the token cannot read %s (has %s)", own, strings.Join(caps[own], ", "))
		return r
	}
	r.Status, r.Reason = Pass, fmt.Sprintf("deny on all %d probed paths outside its prefix", len(outside))
	return r
}

func prefixOf(p string) string {
	p = strings.Trim(p, "/")
	if i := strings.LastIndex(p, "/"); i > 0 {
		return p[:i]
	}
	return p
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// capabilitiesSelf posts to sys/capabilities-self at address alone: no
// proxy, no redirect followed.
func capabilitiesSelf(ctx context.Context, address, caCert, token string, paths []string) (map[string][]string, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caCert != "" {
		pem, err := os.ReadFile(caCert)
		if err != nil {
			return nil, fmt.Errorf("capabilities-self: read ca cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("capabilities-self: ca cert %s holds no PEM certificate", caCert)
		}
		tlsCfg.RootCAs = pool
	}
	hc := &http.Client{
		Transport:     &http.Transport{Proxy: nil, TLSClientConfig: tlsCfg},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
	body, _ := json.Marshal(map[string]any{"paths": paths})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(address, "/")+"/v1/sys/capabilities-self", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("capabilities-self: %w", err)
	}
	req.Header.Set("X-Vault-Token", token)
	req.Header.Set("X-Vault-Request", "true")
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("capabilities-self: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("capabilities-self: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("capabilities-self: status %d", resp.StatusCode)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("capabilities-self: decode: %w", err)
	}
	src := raw
	if d, ok := raw["data"]; ok {
		var m map[string]json.RawMessage
		if json.Unmarshal(d, &m) == nil && len(m) > 0 {
			src = m
		}
	}
	out := map[string][]string{}
	for _, p := range paths {
		var c []string
		if v, ok := src[p]; ok && json.Unmarshal(v, &c) == nil {
			sort.Strings(c)
			out[p] = c
		}
	}
	return out, nil
}
