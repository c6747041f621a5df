package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

// atRestReport counts what the start-up decryption found.
type atRestReport struct {
	DecryptedValues     int            `json:"decrypted_values"`
	UndecryptableValues int            `json:"undecryptable_values"`
	UndecryptableRows   int            `json:"undecryptable_rows"`
	ByTable             map[string]int `json:"undecryptable_by_table"`
	KeySource           string         `json:"encrypted_with"` // "salt_key" or "master_key"
}

// saltKeyHelp is LiteLLM's own wording for a value it cannot decrypt, so
// that log searches written for LiteLLM find the lab's lines too.
const saltKeyHelp = "Did your master_key/salt key change recently? \nError: %s\nSet permanent salt key - https://docs.litellm.ai/docs/proxy/prod#5-set-litellm-salt-key"

// atRestSource is one JSON column holding encrypted values.
type atRestSource struct {
	table, idColumn, column, where string
}

var atRestSources = []atRestSource{
	{"LiteLLM_ProxyModelTable", "model_id", "litellm_params", ""},
	{"LiteLLM_CredentialsTable", "credential_id", "credential_values", ""},
	{"LiteLLM_Config", "param_name", "param_value", `WHERE param_name = '` + litellm.ConfigEnvironmentVariables + `'`},
}

// decryptAtRest reads every encrypted value LiteLLM decrypts at start (model
// params, stored credentials, environment variables) and tries to open it
// with key, the way the proxy does. A value it cannot open is logged with
// LiteLLM's message and a line naming the table, row and field; the proxy
// keeps running, as LiteLLM does, with the value unusable.
func (s *server) decryptAtRest(ctx context.Context, key secret.Value) error {
	rep := atRestReport{ByTable: map[string]int{}, KeySource: "master_key"}
	if !s.cfg.SaltKey.IsZero() {
		rep.KeySource = "salt_key"
	}
	for _, src := range atRestSources {
		rows, err := s.db.Query(ctx, fmt.Sprintf(`SELECT %s, %s FROM "%s" %s`, src.idColumn, src.column, src.table, src.where))
		if err != nil {
			return fmt.Errorf("read %s: %w", src.table, err)
		}
		type item struct {
			id  string
			raw []byte
		}
		var items []item
		for rows.Next() {
			var it item
			if err := rows.Scan(&it.id, &it.raw); err != nil {
				rows.Close()
				return fmt.Errorf("read %s: %w", src.table, err)
			}
			items = append(items, it)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read %s: %w", src.table, err)
		}
		for _, it := range items {
			var fields map[string]any
			if len(it.raw) == 0 || json.Unmarshal(it.raw, &fields) != nil {
				continue // not an object of values
			}
			names := make([]string, 0, len(fields))
			for n := range fields {
				names = append(names, n)
			}
			sort.Strings(names)
			bad := 0
			for _, name := range names {
				v, ok := fields[name].(string)
				if !ok || litellm.DetectFormat(v) == litellm.FormatUnknown {
					continue // plain values pass through, as in LiteLLM
				}
				_, format, err := litellm.DecryptString(key, v)
				if err == nil {
					rep.DecryptedValues++
					continue
				}
				bad++
				rep.UndecryptableValues++
				reason := "Decryption failed. Ciphertext failed verification"
				if !errors.Is(err, litellm.ErrDecrypt) {
					reason = "value is not a valid ciphertext"
				}
				s.log.Error(fmt.Sprintf("Error decrypting value for key: %s, "+saltKeyHelp, name, reason))
				s.log.Error("undecryptable at-rest value", "table", src.table, "row", it.id, "field", name,
					"format", format.String(), "key_source", rep.KeySource)
			}
			if bad > 0 {
				rep.UndecryptableRows++
				rep.ByTable[src.table]++
			}
		}
	}
	s.atRest = rep
	if rep.UndecryptableRows > 0 {
		s.log.Error("at-rest values the proxy cannot read", "rows", rep.UndecryptableRows,
			"values", rep.UndecryptableValues, "key_source", rep.KeySource)
	} else {
		s.log.Info("decrypted at-rest values", "values", rep.DecryptedValues, "key_source", rep.KeySource)
	}
	return nil
}
