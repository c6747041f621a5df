package vault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/secret"
)

// Environment variables read when the inventory leaves a setting out.
const (
	EnvAddress = "VAULT_ADDR"
	EnvToken   = "VAULT_TOKEN"
	EnvCACert  = "VAULT_CACERT"
)

// ConfigFromInventory turns the inventory's vault settings into a Config.
// resolve reads a secret reference (env or file; a vault reference cannot
// be used to reach Vault itself). Address, token and CA certificate fall back
// to VAULT_ADDR, VAULT_TOKEN and VAULT_CACERT when the inventory leaves them
// out and no AppRole is configured.
func ConfigFromInventory(iv inventory.Vault, resolve func(inventory.SecretRef) (secret.Value, error)) (Config, error) {
	cfg := Config{
		Address:          iv.Address,
		CACert:           iv.CACert,
		AllowedAddresses: iv.AllowedAddresses,
		Mount:            iv.Mount,
	}
	if cfg.Address == "" {
		cfg.Address = os.Getenv(EnvAddress)
	}
	if cfg.CACert == "" {
		cfg.CACert = os.Getenv(EnvCACert)
	}
	get := func(name string, ref inventory.SecretRef) (secret.Value, error) {
		if ref.IsZero() {
			return secret.Value{}, nil
		}
		if ref.Vault != "" {
			return secret.Value{}, fmt.Errorf("vault %s: a vault reference cannot log in to vault itself", name)
		}
		v, err := resolve(ref)
		if err != nil {
			return secret.Value{}, fmt.Errorf("vault %s (%s): %w", name, ref, err)
		}
		return v, nil
	}
	var err error
	if cfg.Token, err = get("token", iv.Token); err != nil {
		return Config{}, err
	}
	if cfg.RoleID, err = get("role_id", iv.RoleID); err != nil {
		return Config{}, err
	}
	if cfg.SecretID, err = get("secret_id", iv.SecretID); err != nil {
		return Config{}, err
	}
	if cfg.Token.IsZero() && cfg.RoleID.IsZero() {
		if t := os.Getenv(EnvToken); t != "" {
			cfg.Token = secret.New(t)
		}
	}
	return cfg, nil
}

// FromInventory builds a client from the inventory's vault settings; see
// ConfigFromInventory.
func FromInventory(ctx context.Context, iv inventory.Vault, resolve func(inventory.SecretRef) (secret.Value, error)) (*Client, error) {
	cfg, err := ConfigFromInventory(iv, resolve)
	if err != nil {
		return nil, err
	}
	return New(ctx, cfg)
}

// ResolveSecretRef reads a secret reference: an environment variable, a
// file (its content without the trailing newline), or "path#field" under
// v's KV v2 mount (v may be nil when no reference needs Vault).
func ResolveSecretRef(ctx context.Context, ref inventory.SecretRef, v *Client) (secret.Value, error) {
	switch {
	case ref.Env != "":
		s, ok := os.LookupEnv(ref.Env)
		if !ok || s == "" {
			return secret.Value{}, fmt.Errorf("resolve %s: environment variable is not set", ref)
		}
		return secret.New(s), nil
	case ref.File != "":
		b, err := os.ReadFile(ref.File)
		if err != nil {
			return secret.Value{}, fmt.Errorf("resolve %s: %w", ref, err)
		}
		s := strings.TrimRight(string(b), "\r\n")
		if s == "" {
			return secret.Value{}, fmt.Errorf("resolve %s: file is empty", ref)
		}
		return secret.New(s), nil
	case ref.Vault != "":
		if v == nil {
			return secret.Value{}, fmt.Errorf("resolve %s: no vault client", ref)
		}
		path, field, ok := strings.Cut(ref.Vault, "#")
		if !ok || path == "" || field == "" {
			return secret.Value{}, fmt.Errorf("resolve %s: want path#field", ref)
		}
		e, err := v.Read(ctx, path)
		if err != nil {
			return secret.Value{}, fmt.Errorf("resolve %s: %w", ref, err)
		}
		val := e.Secret(field)
		if val.IsZero() {
			return secret.Value{}, fmt.Errorf("resolve %s: version %d has no field %q", ref, e.Version, field)
		}
		return val, nil
	}
	return secret.Value{}, errors.New("resolve secret: empty reference")
}
