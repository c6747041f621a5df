package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/runbook-dev/runbook/internal/secret"
)

// fileConfig is the part of a LiteLLM proxy config file the gateway reads.
// Other keys are ignored, as the proxy ignores keys it does not know.
type fileConfig struct {
	ModelList []struct {
		ModelName     string         `yaml:"model_name"`
		LiteLLMParams map[string]any `yaml:"litellm_params"`
	} `yaml:"model_list"`
	GeneralSettings struct {
		MasterKey                      string `yaml:"master_key"`
		DatabaseURL                    string `yaml:"database_url"`
		DisableAddingMasterKeyHashToDB bool   `yaml:"disable_adding_master_key_hash_to_db"`
		UseXForwardedFor               bool   `yaml:"use_x_forwarded_for"`
	} `yaml:"general_settings"`
}

// config is what the gateway runs with, after the file and the environment
// are combined.
type config struct {
	MasterKey   secret.Value
	SaltKey     secret.Value // LITELLM_SALT_KEY; empty means the master key encrypts at rest
	DatabaseURL secret.Value // may hold a password
	Models      []string
	// StoreMasterKeyHash false logs master-key requests with the literal
	// "litellm_proxy_master_key" instead of the key's hash.
	StoreMasterKeyHash bool
	UseXForwardedFor   bool
	SkipSchemaUpdate   bool
}

var errNoMasterKey = errors.New("no master key: set general_settings.master_key or LITELLM_MASTER_KEY")

// resolveEnvRef reads "os.environ/NAME" from the environment; other values
// are returned as they are. ok is false when the variable is unset.
func resolveEnvRef(v string, getenv func(string) (string, bool)) (string, bool) {
	name, isRef := strings.CutPrefix(v, "os.environ/")
	if !isRef {
		return v, true
	}
	return getenv(name)
}

// loadConfig combines the config file (path may be empty) with the
// environment the way LiteLLM does: a value in the file wins over the
// environment variable, and "os.environ/NAME" reads NAME.
func loadConfig(path string, getenv func(string) (string, bool)) (*config, error) {
	var fc fileConfig
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if err := yaml.Unmarshal(b, &fc); err != nil {
			return nil, fmt.Errorf("parse config %s: %w", path, err)
		}
	}
	cfg := &config{
		StoreMasterKeyHash: !fc.GeneralSettings.DisableAddingMasterKeyHashToDB,
		UseXForwardedFor:   fc.GeneralSettings.UseXForwardedFor,
	}
	for _, m := range fc.ModelList {
		if m.ModelName != "" {
			cfg.Models = append(cfg.Models, m.ModelName)
		}
	}

	var master string
	var haveMaster bool
	if fc.GeneralSettings.MasterKey != "" {
		master, haveMaster = resolveEnvRef(fc.GeneralSettings.MasterKey, getenv)
		if !haveMaster {
			return nil, fmt.Errorf("general_settings.master_key refers to an unset variable: %w", errNoMasterKey)
		}
	} else {
		master, haveMaster = getenv("LITELLM_MASTER_KEY")
	}
	master = strings.TrimSpace(master)
	switch {
	case !haveMaster || master == "":
		return nil, errNoMasterKey
	case master == "sk-1234":
		return nil, errors.New("refusing the well-known default master key sk-1234: set a strong general_settings.master_key or LITELLM_MASTER_KEY")
	}
	cfg.MasterKey = secret.New(master)

	if salt, ok := getenv("LITELLM_SALT_KEY"); ok && salt != "" {
		cfg.SaltKey = secret.New(salt)
	}

	var dbURL string
	if fc.GeneralSettings.DatabaseURL != "" {
		var ok bool
		if dbURL, ok = resolveEnvRef(fc.GeneralSettings.DatabaseURL, getenv); !ok {
			return nil, errors.New("general_settings.database_url refers to an unset variable")
		}
	} else {
		dbURL, _ = getenv("DATABASE_URL")
	}
	if dbURL != "" {
		cfg.DatabaseURL = secret.New(dbURL)
	}
	if v, _ := getenv("DISABLE_SCHEMA_UPDATE"); strings.EqualFold(v, "true") {
		cfg.SkipSchemaUpdate = true
	}
	return cfg, nil
}

// encryptionKey is the key for values at rest: the salt key when set,
// otherwise the master key.
func (c *config) encryptionKey() secret.Value {
	if !c.SaltKey.IsZero() {
		return c.SaltKey
	}
	return c.MasterKey
}
